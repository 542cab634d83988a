#!/usr/bin/env bash
# genproto.sh regenerates the Go code of every .proto under proto/ in place.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(go env GOPATH)/bin:$PATH"
mod=$(go list -m)
find proto -name '*.proto' | sort | xargs protoc -I . -I /usr/include \
  --go_out=. --go_opt=module="$mod" \
  --go-grpc_out=. --go-grpc_opt=module="$mod"
