package logfwd

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// On-disk record framing (little endian), see docs/logging.md:
//
//	magic  uint32  'cvmq' — lets a scan resynchronise after damage
//	length uint32  payload length, at most maxPayload
//	crc    uint32  CRC-32C of offset||payload
//	offset uint64  the record's queue offset
//	payload        an encoded logs.Record
const (
	recMagic   = 0x716d7663 // "cvmq" little endian
	headerSize = 20
	maxPayload = 8 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var magicBytes = binary.LittleEndian.AppendUint32(nil, recMagic)

// appendRecord appends the framed record to dst.
func appendRecord(dst []byte, offset uint64, payload []byte) []byte {
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:], recMagic)
	binary.LittleEndian.PutUint32(h[4:], uint32(len(payload)))
	binary.LittleEndian.PutUint64(h[12:], offset)
	c := crc32.Update(0, castagnoli, h[12:20])
	c = crc32.Update(c, castagnoli, payload)
	binary.LittleEndian.PutUint32(h[8:], c)
	dst = append(dst, h[:]...)
	return append(dst, payload...)
}

// decodeRecord reads one record at the start of b. It returns the record's
// offset, its payload (aliasing b) and the bytes it spans.
func decodeRecord(b []byte) (offset uint64, payload []byte, n int, err error) {
	if len(b) < headerSize {
		if len(b) >= 4 && binary.LittleEndian.Uint32(b) != recMagic {
			return 0, nil, 0, errCorrupt
		}
		return 0, nil, 0, errShort
	}
	if binary.LittleEndian.Uint32(b) != recMagic {
		return 0, nil, 0, errCorrupt
	}
	length := binary.LittleEndian.Uint32(b[4:])
	if length > maxPayload {
		return 0, nil, 0, errCorrupt
	}
	n = headerSize + int(length)
	if len(b) < n {
		return 0, nil, 0, errShort
	}
	c := crc32.Update(0, castagnoli, b[12:20])
	c = crc32.Update(c, castagnoli, b[headerSize:n])
	if c != binary.LittleEndian.Uint32(b[8:]) {
		return 0, nil, 0, errCorrupt
	}
	return binary.LittleEndian.Uint64(b[12:]), b[headerSize:n], n, nil
}

// resync returns the index of the next possible record start in b after a
// damaged byte at b[0], or -1 if b holds none.
func resync(b []byte) int {
	if len(b) <= 1 {
		return -1
	}
	i := bytes.Index(b[1:], magicBytes)
	if i < 0 {
		return -1
	}
	return i + 1
}
