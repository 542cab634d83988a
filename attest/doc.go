// Package attest produces cvmd's attestation evidence: SEV-SNP reports
// (go-sev-guest), vTPM quotes (go-tpm-tools) and both bound together as Cocos
// binds them, wrapped in an EAT token (attest/eat) signed by a key a verifier
// can check. It also keeps the measurement event log that the supervisor's
// child table and child restarts (PCR 15) and computation manifests (PCR 16)
// are recorded in.
//
// attest talks to a TPM through an io.ReadWriter and to SNP through a
// go-sev-guest QuoteProvider: it never opens devices by itself unless asked
// (OpenTPM, SNPQuoteProvider) and it never verifies (attest/verify does).
// Simulated platforms live in attest/sim, which is cgo and test-signer code.
//
// Only the attestation child (children/attestation) may hold a TPM or SNP
// device; others import attest for its types (Platform, EventLog, bindings).
package attest
