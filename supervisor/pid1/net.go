package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetConfig is the guest's static address on its one NIC.
type NetConfig struct {
	// Iface is the interface name; the image has no udev, so the first
	// virtio NIC is eth0.
	Iface string
	// Addr is the address and prefix; the zero value means "leave the NIC
	// down" (cvmd.net=none).
	Addr netip.Prefix
	// Gateway is the default route's next hop; the zero value means no
	// default route.
	Gateway netip.Addr
}

// DefaultNet is qemu's user network: the guest is 10.0.2.15/24 behind the
// gateway 10.0.2.2 (which is also how guestfwd addresses are reached).
var DefaultNet = NetConfig{
	Iface:   "eth0",
	Addr:    netip.MustParsePrefix("10.0.2.15/24"),
	Gateway: netip.MustParseAddr("10.0.2.2"),
}

// ParseNet parses the value of the cvmd.net kernel parameter: "" (DefaultNet),
// "none", or "ADDR/PREFIX[,GATEWAY[,IFACE]]" with IPv4 or IPv6 addresses.
// The gateway, when given and not empty, must be inside the prefix.
func ParseNet(s string) (NetConfig, error) {
	switch s {
	case "":
		return DefaultNet, nil
	case "none":
		return NetConfig{}, nil
	}
	c := NetConfig{Iface: DefaultNet.Iface}
	parts := strings.Split(s, ",")
	if len(parts) > 3 {
		return NetConfig{}, fmt.Errorf("pid1: cvmd.net: %q has more than 3 comma-separated parts", s)
	}
	p, err := netip.ParsePrefix(parts[0])
	if err != nil {
		return NetConfig{}, fmt.Errorf("pid1: cvmd.net: address %q: %v", parts[0], err)
	}
	c.Addr = p
	if len(parts) > 1 && parts[1] != "" {
		g, err := netip.ParseAddr(parts[1])
		if err != nil {
			return NetConfig{}, fmt.Errorf("pid1: cvmd.net: gateway %q: %v", parts[1], err)
		}
		if !p.Masked().Contains(g) {
			return NetConfig{}, fmt.Errorf("pid1: cvmd.net: gateway %s is outside %s", g, p)
		}
		c.Gateway = g
	}
	if len(parts) > 2 {
		iface := parts[2]
		if iface == "" || len(iface) >= unix.IFNAMSIZ || strings.ContainsAny(iface, "/ :\x00") {
			return NetConfig{}, fmt.Errorf("pid1: cvmd.net: bad interface name %q", iface)
		}
		c.Iface = iface
	}
	return c, nil
}

// configureNetwork brings lo up and gives the NIC its address and default
// route. The NIC may appear a moment after virtio_net is loaded.
func configureNetwork(log *slog.Logger, param string) error {
	var errs []error
	if lo, err := netlink.LinkByName("lo"); err != nil {
		errs = append(errs, fmt.Errorf("pid1: finding lo: %w", err))
	} else if err := netlink.LinkSetUp(lo); err != nil {
		errs = append(errs, fmt.Errorf("pid1: bringing lo up: %w", err))
	}
	c, err := ParseNet(param)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if !c.Addr.IsValid() {
		log.Info("pid1: network left down (cvmd.net=none)")
		return errors.Join(errs...)
	}
	var link netlink.Link
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		link, err = netlink.LinkByName(c.Iface)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("pid1: finding %s: %w", c.Iface, err))...)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(c.Addr)}); err != nil {
		errs = append(errs, fmt.Errorf("pid1: setting %s on %s: %w", c.Addr, c.Iface, err))
	}
	if err := netlink.LinkSetUp(link); err != nil {
		errs = append(errs, fmt.Errorf("pid1: bringing %s up: %w", c.Iface, err))
	}
	if c.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: c.Gateway.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("pid1: default route via %s: %w", c.Gateway, err))
		}
	}
	log.Info("pid1: network up", "iface", c.Iface, "addr", c.Addr.String(), "gateway", c.Gateway.String())
	return errors.Join(errs...)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
