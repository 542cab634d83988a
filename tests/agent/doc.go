// Package agent holds the cross-package tests of the agent child and the
// cvm CLI: full computations over a socketpair and over TCP, every refusal
// by its message, restarts, and the raw Cocos wire format.
package agent
