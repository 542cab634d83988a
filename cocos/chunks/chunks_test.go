package chunks

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	agentpb "github.com/cvmd/cvmd/proto/agent"
)

// split cuts b into buffers at the given lengths (the rest in the last),
// each from a pool that counts what returns to it.
func split(b []byte, pool *countingPool, sizes ...int) mem.BufferSlice {
	var out mem.BufferSlice
	for _, n := range sizes {
		n = min(n, len(b))
		out = append(out, pool.buffer(b[:n]))
		b = b[n:]
	}
	if len(b) > 0 || len(out) == 0 {
		out = append(out, pool.buffer(b))
	}
	return out
}

// countingPool hands out copies as pooled buffers and counts those not yet
// returned: a codec that leaks or double-frees a reference shows here.
type countingPool struct{ out int }

func (p *countingPool) buffer(b []byte) mem.Buffer {
	c := make([]byte, len(b), max(len(b), 1<<14)) // above gRPC's pooling threshold (1 KiB): pooled, not a SliceBuffer
	copy(c, b)
	p.out++
	return mem.NewBuffer(&c, p)
}
func (p *countingPool) Get(n int) *[]byte { b := make([]byte, n); return &b }
func (p *countingPool) Put(*[]byte)       { p.out-- }

func TestMarshalIsProtoMarshal(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	for _, tc := range []struct {
		name string
		msg  proto.Message // as proto would send it
		m    *Message      // the same as a Message
	}{
		{"dataset chunk", &agentpb.DataRequest{Dataset: big, Filename: "big.bin"},
			&Message{Field: 1, Data: mem.BufferSlice{mem.SliceBuffer(big[:100]), mem.SliceBuffer(big[100:])}, Rest: &agentpb.DataRequest{Filename: "big.bin"}}},
		{"algorithm and requirements", &agentpb.AlgoRequest{Algorithm: big[:5000], Requirements: []byte("numpy\n")},
			&Message{Field: 1, Data: mem.BufferSlice{mem.SliceBuffer(big[:5000])}, Rest: &agentpb.AlgoRequest{Requirements: []byte("numpy\n")}}},
		{"requirements only", &agentpb.AlgoRequest{Requirements: []byte("numpy\n")},
			&Message{Field: 1, Rest: &agentpb.AlgoRequest{Requirements: []byte("numpy\n")}}},
		{"result chunk", &agentpb.ResultResponse{File: big[:1<<20]},
			&Message{Field: 1, Data: mem.BufferSlice{mem.SliceBuffer(big[:1<<20])}, Rest: &agentpb.ResultResponse{}}},
		{"empty", &agentpb.ResultResponse{}, &Message{Field: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := proto.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Codec{}.Marshal(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Materialize(), want) {
				t.Fatalf("Marshal differs from proto.Marshal (%d vs %d bytes)", got.Len(), len(want))
			}
			// Other messages go through gRPC's proto codec.
			other, err := Codec{}.Marshal(tc.msg)
			if err != nil || !bytes.Equal(other.Materialize(), want) {
				t.Fatalf("plain message: %v", err)
			}
		})
	}
}

func TestMarshalHandsTheBuffersOver(t *testing.T) {
	pool := &countingPool{}
	data := split(bytes.Repeat([]byte{7}, 40000), pool, 20000)
	out, err := Codec{}.Marshal(&Message{Field: 1, Data: data, Rest: &agentpb.DataRequest{Filename: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	if &out[1].ReadOnlyData()[0] != &data[0].ReadOnlyData()[0] {
		t.Fatal("the chunk was copied")
	}
	out.Free() // what gRPC does once written
	if pool.out != 0 {
		t.Fatalf("%d buffers not returned", pool.out)
	}
}

func TestUnmarshalReferencesTheReceivedBuffers(t *testing.T) {
	chunk := bytes.Repeat([]byte("abc"), 30000)
	wire, _ := proto.Marshal(&agentpb.DataRequest{Dataset: chunk, Filename: "d.csv"})
	for _, sizes := range [][]int{nil, {1}, {2, 16384, 16384}, {3, 1, 1, 1}, {len(wire) - 3}, {len(wire) - 8, 1, 1, 1}} {
		pool := &countingPool{}
		in := split(wire, pool, sizes...)
		m := &Message{Field: 1, Rest: &agentpb.DataRequest{}}
		if err := (Codec{}).Unmarshal(in, m); err != nil {
			t.Fatalf("%v: %v", sizes, err)
		}
		in.Free() // what gRPC does after Unmarshal
		if !bytes.Equal(m.Data.Materialize(), chunk) || m.Rest.(*agentpb.DataRequest).GetFilename() != "d.csv" {
			t.Fatalf("%v: got %d bytes, filename %q", sizes, m.Data.Len(), m.Rest.(*agentpb.DataRequest).GetFilename())
		}
		if pool.out == 0 {
			t.Fatalf("%v: the chunk was copied out of the received buffers", sizes)
		}
		m.Data.Free()
		if pool.out != 0 {
			t.Fatalf("%v: %d buffers not returned", sizes, pool.out)
		}
	}
}

// FuzzUnmarshal: whatever the bytes and however gRPC split them into
// buffers, a Message decodes exactly as proto.Unmarshal decodes the same
// bytes (bulk field, other fields, unknown fields, errors), and every
// buffer reference is released.
func FuzzUnmarshal(f *testing.F) {
	ok, _ := proto.Marshal(&agentpb.DataRequest{Dataset: []byte("hello world"), Filename: "f"})
	f.Add(ok, uint16(3), uint16(5))
	f.Add(append(ok, ok...), uint16(1), uint16(1))
	f.Add(protowire.AppendTag(nil, 1, protowire.VarintType), uint16(0), uint16(0))
	f.Add([]byte{0x0a, 0xff}, uint16(1), uint16(0))
	f.Add([]byte{0x0b, 0x0c, 0x0a, 0x00}, uint16(1), uint16(2))
	f.Fuzz(func(t *testing.T, b []byte, s1, s2 uint16) {
		var want agentpb.DataRequest
		wantErr := proto.Unmarshal(b, &want)
		pool := &countingPool{}
		in := split(b, pool, int(s1)%(len(b)+1), int(s2)%(len(b)+1))
		m := &Message{Field: 1, Rest: &agentpb.DataRequest{}}
		err := Codec{}.Unmarshal(in, m)
		in.Free()
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("error %v, proto's %v", err, wantErr)
		}
		if err == nil {
			got := m.Rest.(*agentpb.DataRequest)
			got.Dataset = m.Data.Materialize()
			if !proto.Equal(got, &want) {
				t.Fatalf("decoded %v, proto decoded %v", got, &want)
			}
		}
		m.Data.Free()
		if pool.out != 0 {
			t.Fatalf("%d buffers not returned", pool.out)
		}
	})
}
