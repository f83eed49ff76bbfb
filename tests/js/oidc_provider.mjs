// An OpenID provider for the identity tests: npm's `oidc-provider` (a certified OpenID Connect
// implementation), on loopback. `node oidc_provider.mjs PORT [JWKS] [REDIRECT_URI] [WEB_TTL]`;
// `PYLON_NODE_MODULES` names the node_modules `make test` installs under target/. JWKS, when
// given (or `-`), is the public key set of the client `pylon-jwt` (private_key_jwt);
// REDIRECT_URI registers the web client `pylon-web` (code flow, its login form the provider's
// development one: any login, any password), its access tokens valid WEB_TTL seconds (300), with
// refresh tokens rotated on every use (a reused one revokes the session, as strict providers
// do). Clients: `svc` gets client credentials
// tokens, `pylon` (client_secret_basic), `pylon-post` (client_secret_post) and `pylon-jwt`
// introspect them. Access tokens are opaque, bound to the resource asked (`aud`), valid 300 s,
// or 2 s for `urn:short`; JWTs for `urn:jwt*`. `GET /_introspections` and `GET /_refreshes`
// count the introspections and refresh-token grants made; `GET /_forget?token=T` ends an access
// token early (a revocation would end its whole grant).
const root = process.env.PYLON_NODE_MODULES;
const { default: Provider } = await import(`${root}/oidc-provider/lib/index.js`);

const port = Number(process.argv[2]);
const webTtl = Number(process.argv[5] || 300);
const issuer = `http://127.0.0.1:${port}`;
const machine = { grant_types: ['client_credentials'], redirect_uris: [], response_types: [] };
const clients = [
  { client_id: 'svc', client_secret: 'svc-secret', ...machine },
  { client_id: 'pylon', client_secret: 'pylon-secret', ...machine },
  { client_id: 'pylon-post', client_secret: 'pylon-post-secret', token_endpoint_auth_method: 'client_secret_post', ...machine },
];
if (process.argv[3] && process.argv[3] !== '-') {
  clients.push({
    client_id: 'pylon-jwt', token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256', jwks: JSON.parse(process.argv[3]), ...machine,
  });
}

if (process.argv[4]) {
  clients.push({
    client_id: 'pylon-web', client_secret: 'pylon-web-secret',
    grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
    redirect_uris: [process.argv[4]], post_logout_redirect_uris: [process.argv[4].replace(/\/oauth\/callback$/, '/')],
  });
}

const provider = new Provider(issuer, {
  clients,
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, email: `${id}@example.com`, name: `User ${id}` }),
  }),
  claims: { openid: ['sub'], email: ['email'], profile: ['name'] },
  conformIdTokenClaims: false,
  issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  scopes: ['openid', 'email', 'profile', 'offline_access', 'orders:read', 'orders:write'],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:orders',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: 'orders:read orders:write',
        audience: resource,
        accessTokenTTL: client.clientId === 'pylon-web' ? webTtl : (resource === 'urn:short' ? 2 : 300),
        accessTokenFormat: resource.startsWith('urn:jwt') ? 'jwt' : 'opaque',
      }),
    },
  },
});

// Why a request was refused, for the test's output.
for (const event of ['introspection.error', 'grant.error', 'server_error']) {
  provider.on(event, (ctx, err) => console.log(`${event}: ${err.message} ${err.error_description ?? ''}`));
}

let introspections = 0;
let refreshes = 0;
provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params.grant_type === 'refresh_token') refreshes += 1;
});
provider.use(async (ctx, next) => {
  if (ctx.path === '/_forget') {
    // An access token ended early at the provider, its grant (and refresh token) kept.
    const token = await provider.AccessToken.find(ctx.query.token);
    if (token) await token.destroy();
    ctx.body = token ? 'forgotten' : 'unknown';
    return;
  }
  if (ctx.path === '/_introspections' || ctx.path === '/_refreshes') {
    ctx.body = String(ctx.path === '/_refreshes' ? refreshes : introspections);
    return;
  }
  if (ctx.path === '/token/introspection') introspections += 1;
  await next();
});
provider.listen(port, '127.0.0.1', () => console.log('listening'));
