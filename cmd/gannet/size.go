package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize reads a size in bytes: a number, optionally followed by KiB,
// MiB, GiB or TiB (powers of 1024) or kB, MB, GB, TB (powers of 1000).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"kB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || (n > 0 && mult > (1<<62)/n) {
		return 0, fmt.Errorf("%q is not a size (a number of bytes, or with KiB, MiB, GiB, TiB, kB, MB, GB or TB)", s)
	}
	return n * mult, nil
}
