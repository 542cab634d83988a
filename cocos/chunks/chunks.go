// Package chunks carries the bulk bytes of the agent's streamed messages
// (agent.DataRequest.dataset, AlgoRequest.algorithm, ResultResponse.file:
// Cocos's 1 MiB chunks) through gRPC without copying them: a Codec that
// marshals and unmarshals every message as gRPC's proto codec does, except
// a *Message, whose bulk field is gRPC buffers (mem.BufferSlice) sent as
// they are and received as references into the buffers gRPC read the
// frames into. The bytes on the wire are exactly proto.Marshal's.
//
// Both ends of an upload and a download use it: the agent (its public gRPC
// server) and the cvm CLI. chunks imports gRPC and protobuf only.
package chunks

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the codec captured below
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// protoCodec is gRPC's own proto codec, captured before anyone can register
// a Codec in its place.
var protoCodec = encoding.GetCodecV2("proto")

// Message is a protobuf message whose bytes field number Field travels as
// Data, outside Rest (every other field; its Field must be left empty).
//
// Sent, Data is handed to gRPC, which frees it once written (so its buffers
// may come from a pool and return to it). Received, Data holds references
// into the receive buffers that the caller must Free; Rest gets the other
// fields.
type Message struct {
	Field protowire.Number
	Data  mem.BufferSlice
	Rest  proto.Message
}

// Codec is a gRPC encoding.CodecV2 named "proto": *Message as described
// above, everything else through gRPC's proto codec.
type Codec struct{}

// Name is "proto": a Codec replaces the proto codec without changing what
// the peer sees (content-type application/grpc).
func (Codec) Name() string { return "proto" }

// Marshal encodes v. For a *Message the result is the bulk field's tag and
// length, Data's buffers themselves (their ownership passes to gRPC), then
// Rest encoded: proto.Marshal's bytes, which put fields in number order.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*Message)
	if !ok {
		return protoCodec.Marshal(v)
	}
	if m.Field <= 0 || m.Field > protowire.MaxValidNumber {
		m.Data.Free()
		return nil, fmt.Errorf("chunks: bulk field number %d is not valid", m.Field)
	}
	var rest []byte
	if m.Rest != nil {
		var err error
		if rest, err = proto.Marshal(m.Rest); err != nil {
			m.Data.Free()
			return nil, err
		}
	}
	out := make(mem.BufferSlice, 0, len(m.Data)+2)
	if n := m.Data.Len(); n > 0 {
		// proto3 leaves an empty bytes field out; so do we.
		hdr := protowire.AppendTag(make([]byte, 0, 16), m.Field, protowire.BytesType)
		out = append(out, mem.SliceBuffer(protowire.AppendVarint(hdr, uint64(n))))
		out = append(out, m.Data...)
	} else {
		m.Data.Free()
	}
	m.Data = nil
	if len(rest) > 0 {
		out = append(out, mem.SliceBuffer(rest))
	}
	return out, nil
}

// Unmarshal decodes data into v. For a *Message, v.Data becomes references
// to the bytes of the last occurrence of v.Field (as proto keeps the last
// value of a repeated scalar field) and every other field is unmarshaled
// into v.Rest, so that unknown fields and wrong wire types are handled as
// proto.Unmarshal handles them.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*Message)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	m.Data.Free()
	m.Data = nil
	c := cursor{bufs: data}
	var rest []byte
	for c.remaining() > 0 {
		start := c
		num, typ, err := c.tag()
		if err != nil {
			m.Data.Free()
			m.Data = nil
			return err
		}
		if num == m.Field && typ == protowire.BytesType {
			n, err := c.varint()
			if err == nil && n > uint64(c.remaining()) {
				err = errTruncated
			}
			if err != nil {
				m.Data.Free()
				m.Data = nil
				return err
			}
			m.Data.Free()
			m.Data = c.take(int(n))
			continue
		}
		if err := c.skipValue(num, typ); err != nil {
			m.Data.Free()
			m.Data = nil
			return err
		}
		rest = start.appendUntil(rest, &c)
	}
	if m.Rest != nil {
		proto.Reset(m.Rest)
		if err := proto.Unmarshal(rest, m.Rest); err != nil {
			m.Data.Free()
			m.Data = nil
			return err
		}
	}
	return nil
}

var errTruncated = errors.New("chunks: message truncated")

// cursor reads a BufferSlice as one byte string without joining it.
type cursor struct {
	bufs mem.BufferSlice
	i    int // current buffer
	off  int // offset in it
}

func (c *cursor) remaining() int {
	n := 0
	for j := c.i; j < len(c.bufs); j++ {
		n += c.bufs[j].Len()
	}
	return n - c.off
}

func (c *cursor) byte() (byte, bool) {
	for c.i < len(c.bufs) {
		b := c.bufs[c.i].ReadOnlyData()
		if c.off < len(b) {
			v := b[c.off]
			c.off++
			return v, true
		}
		c.i, c.off = c.i+1, 0
	}
	return 0, false
}

// varint reads a base-128 varint of at most 10 bytes, as protowire does.
func (c *cursor) varint() (uint64, error) {
	var v uint64
	for shift := 0; shift < 70; shift += 7 {
		b, ok := c.byte()
		if !ok {
			return 0, errTruncated
		}
		if shift == 63 && b > 1 {
			return 0, errors.New("chunks: varint overflows 64 bits")
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("chunks: varint longer than 10 bytes")
}

func (c *cursor) tag() (protowire.Number, protowire.Type, error) {
	v, err := c.varint()
	if err != nil {
		return 0, 0, err
	}
	num, typ := protowire.DecodeTag(v)
	if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
		return 0, 0, fmt.Errorf("chunks: invalid field number %d", int64(v>>3))
	}
	return num, typ, nil
}

// skip advances n bytes.
func (c *cursor) skip(n int) error {
	for n > 0 {
		if c.i >= len(c.bufs) {
			return errTruncated
		}
		l := c.bufs[c.i].Len() - c.off
		if n < l {
			c.off += n
			return nil
		}
		n -= l
		c.i, c.off = c.i+1, 0
	}
	return nil
}

// skipValue advances past one value of wire type typ (a group to its end
// tag).
func (c *cursor) skipValue(num protowire.Number, typ protowire.Type) error {
	switch typ {
	case protowire.VarintType:
		_, err := c.varint()
		return err
	case protowire.Fixed32Type:
		return c.skip(4)
	case protowire.Fixed64Type:
		return c.skip(8)
	case protowire.BytesType:
		n, err := c.varint()
		if err != nil {
			return err
		}
		if n > uint64(c.remaining()) {
			return errTruncated
		}
		return c.skip(int(n))
	case protowire.StartGroupType:
		for {
			n, t, err := c.tag()
			if err != nil {
				return err
			}
			if t == protowire.EndGroupType {
				if n != num {
					return errors.New("chunks: mismatched end group")
				}
				return nil
			}
			if err := c.skipValue(n, t); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("chunks: invalid wire type %d", typ)
}

// take returns references to the next n bytes (n ≤ remaining) and advances.
func (c *cursor) take(n int) mem.BufferSlice {
	var out mem.BufferSlice
	for n > 0 {
		b := c.bufs[c.i]
		if l := min(b.Len()-c.off, n); l > 0 {
			out = append(out, b.Slice(c.off, c.off+l))
			n -= l
			c.off += l
		}
		if c.off == b.Len() {
			c.i, c.off = c.i+1, 0
		}
	}
	return out
}

// appendUntil appends to dst the bytes from c up to end.
func (c cursor) appendUntil(dst []byte, end *cursor) []byte {
	for c.i < end.i || (c.i == end.i && c.off < end.off) {
		b := c.bufs[c.i].ReadOnlyData()
		stop := len(b)
		if c.i == end.i {
			stop = end.off
		}
		dst = append(dst, b[c.off:stop]...)
		c.i, c.off = c.i+1, 0
	}
	return dst
}
