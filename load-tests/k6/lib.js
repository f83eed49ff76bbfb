// Shared by the k6 scenarios: the demo's routes, and checks that every answer is what the
// gateway promises (status, request id, JSON error shape).
import http from 'k6/http';
import { check } from 'k6';

export const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';

export function mixedRequest() {
  const r = Math.random();
  let res;
  if (r < 0.5) {
    res = http.get(`${BASE}/echo/items/${Math.floor(Math.random() * 1000)}`, { tags: { route: 'echo' } });
    check(res, {
      'echo 200': (x) => x.status === 200,
      'request id returned': (x) => (x.headers['X-Request-Id'] || '').length > 0,
    });
  } else if (r < 0.8) {
    res = http.get(`${BASE}/ping`, { tags: { route: 'ping' } });
    check(res, { 'ping 200': (x) => x.status === 200 && x.body === 'pong\n' });
  } else if (r < 0.95) {
    res = http.post(`${BASE}/api/orders`, JSON.stringify({ item: 'book', qty: 1 }), {
      headers: { 'content-type': 'application/json' },
      tags: { route: 'api' },
    });
    check(res, { 'api 200': (x) => x.status === 200 && x.json('path') === '/orders' });
  } else {
    res = http.get(`${BASE}/no-such-route`, { tags: { route: 'none' } });
    check(res, { '404 json': (x) => x.status === 404 && x.json('error.code') === 'route_not_found' });
  }
  return res;
}
