package attest_test

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/cvmd/cvmd/attest"
)

func TestEventLogReplay(t *testing.T) {
	e1, err := attest.JSONEvent(attest.EventChildTable, attest.ChildTable{SHA256: "ab"})
	if err != nil {
		t.Fatal(err)
	}
	e2 := attest.ManifestEvent([]byte(`{}`))
	log := attest.EventLog{e1, e2}
	b, err := attest.MarshalLog(log)
	if err != nil {
		t.Fatal(err)
	}
	back, err := attest.ParseLog(b)
	if err != nil || len(back) != 2 {
		t.Fatalf("%v %v", back, err)
	}
	got, _ := back.Replay(attest.MeasurePCR)
	d := sha256.Sum256(append([]byte("cvmd:child-table\x00"), e1.Data...))
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("PCR 15 replay %x, want %x", got, want)
	}
	got16, _ := back.Replay(attest.ManifestPCR)
	want16 := sha256.Sum256(append(make([]byte, 32), e2.Data[:32]...))
	if !bytes.Equal(got16, want16[:]) {
		t.Fatal("PCR 16 replay")
	}
}

func TestEventValidate(t *testing.T) {
	for name, e := range map[string]attest.Event{
		"unknown type":   {PCR: 15, Type: "x", Data: []byte("{}")},
		"wrong PCR":      {PCR: 23, Type: attest.EventChildStart, Data: []byte("{}")},
		"not JSON":       {PCR: 15, Type: attest.EventChildStart, Data: []byte("{")},
		"too big":        {PCR: 15, Type: attest.EventChildStart, Data: append(append([]byte(`"`), bytes.Repeat([]byte("a"), 1000)...), '"')},
		"short manifest": {PCR: 16, Type: attest.EventManifest, Data: []byte{1}},
		"manifest on 15": {PCR: 15, Type: attest.EventManifest, Data: make([]byte, 80)},
	} {
		if err := e.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

func FuzzParseLog(f *testing.F) {
	e1, _ := attest.JSONEvent(attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 3})
	b, _ := attest.MarshalLog(attest.EventLog{e1, attest.ManifestEvent([]byte("m"))})
	f.Add(b)
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := attest.ParseLog(b)
		if err != nil {
			return
		}
		for _, pcr := range []uint32{attest.MeasurePCR, attest.ManifestPCR} {
			if _, err := l.Replay(pcr); err != nil {
				t.Fatalf("parsed log does not replay: %v", err)
			}
		}
	})
}
