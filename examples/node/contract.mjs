// audiofan's bus contract in JavaScript (docs/contract.md): subject tokens,
// partitions, finding a call's stream, and the canonical decoding of a
// MessagePack payload. The examples and the golden-vector check share it.
import { decode, ExtensionCodec, EXT_TIMESTAMP, decodeTimestampToTimeSpec } from "@msgpack/msgpack";

const plain = /^[A-Za-z0-9-]$/;

// token writes a call id or participant raw id as a subject token: bytes
// A-Z a-z 0-9 - stand as they are, every other byte is _ and two upper-case
// hex digits. No participant is "_mixed".
export function token(id) {
  if (id === "") return "_mixed";
  let out = "";
  for (const b of new TextEncoder().encode(id)) {
    const c = String.fromCharCode(b);
    out += b < 0x80 && plain.test(c) ? c : "_" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

// partition is the call's partition: FNV-1a (32 bit) of its token, modulo
// the bus's partition count, as nats-server's partition() mapping computes it.
export function partition(callToken, partitions) {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(callToken)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}

// Timestamps keep their nanoseconds: the default decoder would give a Date
// (milliseconds).
const ext = new ExtensionCodec();
ext.register({
  type: EXT_TIMESTAMP,
  encode: () => null,
  decode: (data) => {
    const { sec, nsec } = decodeTimestampToTimeSpec(data);
    return { sec, nsec, timestamp: true };
  },
});

// rfc3339 writes a timestamp as the contract's canonical JSON does: UTC,
// nanoseconds with trailing zeros dropped.
function rfc3339({ sec, nsec }) {
  const whole = new Date(Number(sec) * 1000).toISOString().replace(/\.\d{3}Z$/, "");
  const frac = String(nsec).padStart(9, "0").replace(/0+$/, "");
  return whole + (frac ? "." + frac : "") + "Z";
}

function canonical(v) {
  if (v instanceof Uint8Array) return Buffer.from(v).toString("base64");
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    if (v.timestamp === true && "nsec" in v) return rfc3339(v);
    const out = {};
    for (const [k, e] of Object.entries(v)) out[k] = canonical(e);
    return out;
  }
  return v;
}

// decodePayload decodes a payload into its canonical JSON value: maps as
// objects, bin as base64, timestamps as RFC 3339 strings.
export function decodePayload(bytes) {
  return canonical(decode(bytes, { extensionCodec: ext }));
}

// decodeRaw decodes a payload keeping bin as bytes (timestamps as RFC 3339).
export function decodeRaw(bytes) {
  const keep = (v) => {
    if (v instanceof Uint8Array) return v;
    if (Array.isArray(v)) return v.map(keep);
    if (v && typeof v === "object") {
      if (v.timestamp === true && "nsec" in v) return rfc3339(v);
      return Object.fromEntries(Object.entries(v).map(([k, e]) => [k, keep(e)]));
    }
    return v;
  };
  return keep(decode(bytes, { extensionCodec: ext }));
}

// layout reads the bus's partition count from the stream that holds
// partition 0: a shard says it in its metadata, the single stream in its
// subject transform.
export async function layout(jsm, prefix = "calls") {
  const name = await jsm.streams.find(`${prefix}.0._.lifecycle`);
  const si = await jsm.streams.info(name);
  const md = si.config.metadata ?? {};
  if (md["audiofan.layout"] === "shards") return { partitions: Number(md["audiofan.partitions"]), prefix };
  const m = /partition\((\d+),/.exec(si.config.subject_transform?.dest ?? "");
  if (!m) throw new Error(`stream ${name} does not partition calls`);
  return { partitions: Number(m[1]), prefix };
}

// callStream finds the stream that holds a call, and its stored subjects.
export async function callStream(jsm, callId, prefix = "calls") {
  const { partitions } = await layout(jsm, prefix);
  const tok = token(callId);
  const p = partition(tok, partitions);
  const filter = `${prefix}.${p}.${tok}.>`;
  return { stream: await jsm.streams.find(`${prefix}.${p}.${tok}.lifecycle`), filter, partition: p };
}

// connectOptions are the NATS connection's options from the environment,
// as audiofan's own commands read them.
export function connectOptions() {
  const o = { servers: (process.env.NATS_URL || "nats://127.0.0.1:4222").split(",") };
  if (process.env.NATS_USER) Object.assign(o, { user: process.env.NATS_USER, pass: process.env.NATS_PASSWORD ?? "" });
  return o;
}
