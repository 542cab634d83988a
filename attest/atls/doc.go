// Package atls is attested TLS as Cocos v0.9+ speaks it: after a TLS 1.3
// handshake, the client sends one framed RFC 9261 authenticator request
// (ClientCertificateRequest offering signature scheme ecdsa_secp256r1_sha256
// and the CMW attestation extension 0xFF00) and the server answers with one
// framed exported authenticator (Certificate, CertificateVerify, Finished)
// whose leaf entry carries a CMW JSON payload: an EAT token whose report data
// and nonce bind it to the TLS session through the exporter "Attestation".
// The same TLS stream then carries HTTP/2 (gRPC) with prior knowledge.
//
// Server (Serve) is used by the ingress child; Client / Dialer by the cvm CLI.
// The client checks everything Cocos's checks and more: the authenticator's
// structure, context, signature scheme, CertificateVerify signature, Finished
// MAC, that the authenticator's leaf is the TLS server certificate, the
// binder, that the EAT's nonce is the one derived from the binding, and the
// evidence against a policy through the EvidenceVerifier it is given
// (attest/atlsverify's, over attest/verify). Every refusal is a *CheckError
// naming the check.
//
// atls does not obtain evidence (the server is handed an Evidence function),
// does not log, and runs one exchange per connection (no renegotiation).
// Anyone may import it: the ingress child (server side) and the cvm CLI
// (client side, with gRPC transport credentials). Of cvmd it imports only
// attest/strictcbor (to read the token's nonce).
package atls
