package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/term"
)

// liveProgress shows an apply on a terminal as one line per cluster (and one
// for mesh-wide steps), each redrawn in place with its latest step. Elsewhere
// progress stays plain lines, one per step, fit for logs.
type liveProgress struct {
	w     io.Writer
	width int
	mu    sync.Mutex
	order []string
	last  map[string]string
	drawn int
}

// progressWriter picks the live view when w is a terminal.
func progressWriter(w io.Writer, clusters []string) io.Writer {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return w
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil || width < 40 {
		width = 100
	}
	return newLiveProgress(w, clusters, width)
}

func newLiveProgress(w io.Writer, clusters []string, width int) *liveProgress {
	return &liveProgress{w: w, width: width, order: append([]string{"mesh"}, clusters...), last: map[string]string{}}
}

// Write takes the hub's progress lines ("east:      cacerts ...", or
// "mesh:      east: applied ..." for steps the control-plane engine reports).
func (p *liveProgress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		key, msg, ok := strings.Cut(line, ":")
		if !ok {
			key, msg = "mesh", line
		}
		msg = strings.TrimSpace(msg)
		if c, rest, ok := strings.Cut(msg, ": "); key == "mesh" && ok && p.known(c) {
			key, msg = c, rest
		}
		if !p.known(key) {
			p.order = append(p.order, key)
		}
		p.last[key] = msg
	}
	p.redraw()
	return len(b), nil
}

func (p *liveProgress) known(key string) bool {
	for _, k := range p.order {
		if k == key {
			return true
		}
	}
	return false
}

func (p *liveProgress) redraw() {
	if p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA", p.drawn) // back to the block's first line
	}
	for _, k := range p.order {
		line := fmt.Sprintf("%-10s %s", k+":", p.last[k])
		if r := []rune(line); len(r) > p.width-1 {
			line = string(r[:p.width-2]) + "…"
		}
		fmt.Fprintf(p.w, "\x1b[2K%s\n", line) // clear the line, then write it
	}
	p.drawn = len(p.order)
}
