// Decodes every golden vector of the contract (codec/testdata/vectors) with
// @msgpack/msgpack and checks it gives the vector's JSON, and that the
// vector's partition and subject follow from its call id. Exits 1 on any
// difference. Run by make test (TestContractVectorsInNode).
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { deepStrictEqual } from "node:assert/strict";
import { decodePayload, token, partition } from "./contract.mjs";

const dir = process.argv[2] ?? new URL("../../codec/testdata/vectors", import.meta.url).pathname;
let failed = 0, n = 0;
for (const f of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
  const vec = JSON.parse(readFileSync(join(dir, f), "utf8"));
  try {
    const got = decodePayload(Buffer.from(vec.msgpack, "hex"));
    deepStrictEqual(got, vec.json);
    const call = got.call ?? "2f1c9e7a-4b1d-4e0e-9a3b-7d6c5b4a3f21"; // an outbound payload names no call
    const p = partition(token(call), 32);
    if (p !== vec.partition) throw new Error(`partition ${vec.partition}, computed ${p}`);
    const tokens = vec.subject.split(".");
    const callTok = vec.payload === "outbound" ? tokens[1] : tokens[2];
    if (callTok !== token(call)) throw new Error(`subject ${vec.subject} does not carry the token ${token(call)}`);
    if ("participant" in got && vec.payload !== "event" && tokens[4] !== token(got.participant))
      throw new Error(`subject ${vec.subject} does not carry the participant's token ${token(got.participant)}`);
    n++;
  } catch (e) {
    failed++;
    console.error(`${f}: ${e.message}`);
  }
}
console.log(`${n} vectors decoded to their JSON${failed ? `, ${failed} did not` : ""}`);
process.exit(failed || n === 0 ? 1 : 0);
