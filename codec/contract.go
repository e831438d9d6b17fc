package codec

// ContractVersion is the version of the bus contract this codec speaks:
// subjects, tokens, headers and payloads, as docs/contract.md states them
// (its change list says what each version changed). It follows semantic
// versioning: a key or subject added is a minor version, anything removed
// or changed in meaning a major one.
const ContractVersion = "1.1.0"
