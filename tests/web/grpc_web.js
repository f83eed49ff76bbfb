// A browser page's gRPC-Web calls (Google's grpc-web client from npm, bundled by esbuild in the
// test): the echo service of tests/py/echo.proto through the gateway, in binary and text form.
// `runAll(gateway)` resolves to one line per format, such as
// `binary:unary=s1|hi;stream=3;fail=5:s1 failed as asked`.
import { GrpcWebClientBase, MethodDescriptor } from "grpc-web";

// echo.v1.Msg, the fields the test uses: text (1), count (2), fail (4).
class Msg {
  constructor(text = "", count = 0, fail = 0) {
    this.text = text;
    this.count = count;
    this.fail = fail;
  }
}

function varint(out, n) {
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
}

function serialize(m) {
  const out = [];
  const text = new TextEncoder().encode(m.text);
  out.push(0x0a);
  varint(out, text.length);
  out.push(...text);
  if (m.count) {
    out.push(0x10);
    varint(out, m.count);
  }
  if (m.fail) {
    out.push(0x20);
    varint(out, m.fail);
  }
  return new Uint8Array(out);
}

function deserialize(bytes) {
  const m = new Msg();
  let i = 0;
  const read = () => {
    let n = 0;
    let shift = 0;
    for (;;) {
      const b = bytes[i++];
      n |= (b & 0x7f) << shift;
      if (b < 0x80) return n;
      shift += 7;
    }
  };
  while (i < bytes.length) {
    const key = read();
    if ((key & 7) === 2) {
      const len = read();
      if (key >> 3 === 1) m.text = new TextDecoder().decode(bytes.subarray(i, i + len));
      i += len;
    } else {
      const v = read();
      if (key >> 3 === 2) m.count = v;
    }
  }
  return m;
}

const unary = new MethodDescriptor("/echo.v1.Echo/Unary", "unary", Msg, Msg, serialize, deserialize);
const stream = new MethodDescriptor(
  "/echo.v1.Echo/ServerStream", "server_streaming", Msg, Msg, serialize, deserialize);

async function run(gateway, format) {
  const client = new GrpcWebClientBase({ format });
  const one = await client.thenableCall(gateway + "/echo.v1.Echo/Unary", new Msg("hi"), {}, unary);
  const texts = await new Promise((resolve, reject) => {
    const got = [];
    client
      .serverStreaming(gateway + "/echo.v1.Echo/ServerStream", new Msg("s", 3), {}, stream)
      .on("data", (m) => got.push(m.text))
      .on("error", reject)
      .on("end", () => resolve(got));
  });
  let failed = "none";
  try {
    await client.thenableCall(gateway + "/echo.v1.Echo/Unary", new Msg("x", 0, 5), {}, unary);
  } catch (e) {
    failed = `${e.code}:${e.message}`;
  }
  const head = one.text.split("|").slice(0, 2).join("|");
  return `${format}:unary=${head};stream=${texts.length};fail=${failed}`;
}

export async function runAll(gateway) {
  const lines = [];
  for (const format of ["binary", "text"]) {
    try {
      lines.push(await run(gateway, format));
    } catch (e) {
      lines.push(`${format}:error=${e.code}:${e.message}`);
    }
  }
  return lines.join("|");
}
