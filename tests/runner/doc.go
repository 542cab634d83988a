// Package runner holds the runner's integration tests (run as root): every
// algorithm type end to end through the runner and the supervisor's
// algorithm-sandbox handler over a real control channel, the escape attempts
// an algorithm must fail at, and the runner's benchmarks. It has no code of
// its own outside tests.
package runner
