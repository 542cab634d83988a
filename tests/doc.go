// Package tests holds the checks that span the whole module: the import
// rules of DESIGN.md and the package-doc rule. Integration suites live in
// its subfolders (tests/supervisor, tests/agent, tests/runner, tests/vm).
package tests
