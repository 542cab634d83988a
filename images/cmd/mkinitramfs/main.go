// Command mkinitramfs writes a staging directory as a reproducible,
// gzip-compressed newc initramfs (see package images/initramfs), adds the
// device nodes the kernel needs before devtmpfs is mounted, and prints the
// archive's sha256 and size.
//
//	mkinitramfs -root images/out/root-initramfs -epoch 1700000000 -o images/out/initramfs.cpio.gz
package main

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cvmd/cvmd/images/initramfs"
)

// devices are always added: the kernel opens /dev/console for /init's stdio
// before anything could mount devtmpfs, and /init gets no console without it.
var devices = []initramfs.Entry{
	{Name: "dev", Mode: initramfs.TypeDir | 0o755},
	{Name: "dev/console", Mode: initramfs.TypeChr | 0o600, RdevMajor: 5, RdevMinor: 1},
	{Name: "dev/null", Mode: initramfs.TypeChr | 0o666, RdevMajor: 1, RdevMinor: 3},
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	root := flag.String("root", "", "staging directory to archive (required)")
	out := flag.String("o", "", "output file (required)")
	epoch := flag.String("epoch", "0", "modification time of every entry, seconds since 1970 (SOURCE_DATE_EPOCH)")
	level := flag.Int("level", gzip.BestCompression, "gzip level; 0 writes an uncompressed cpio")
	flag.Parse()
	if *root == "" || *out == "" || flag.NArg() != 0 {
		flag.Usage()
		return fmt.Errorf("-root and -o are required")
	}
	mtime, err := strconv.ParseInt(*epoch, 10, 64)
	if err != nil || mtime < 0 {
		return fmt.Errorf("-epoch %q: want seconds since 1970", *epoch)
	}
	es, err := initramfs.FromDir(*root)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, e := range es {
		have[e.Name] = true
	}
	for _, d := range devices {
		if !have[d.Name] {
			es = append(es, d)
		}
	}
	initramfs.Sort(es)

	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	var w io.Writer = bw
	var zw *gzip.Writer
	if *level != 0 {
		// No name, no time, OS "unknown": gzip -n's header.
		if zw, err = gzip.NewWriterLevel(bw, *level); err != nil {
			return err
		}
		w = zw
	}
	if err := initramfs.Write(w, es, mtime); err != nil {
		return err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	fmt.Printf("%x  %d  %s  (%d entries)\n", h.Sum(nil), st.Size(), strings.TrimPrefix(*out, "./"), len(es))
	return nil
}
