package ring

import (
	"crypto/rand"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"
)

func clusters(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("cluster-%02d", i))
	}
	return out
}

// TestRendezvousChurn: losing a member moves only its keys; its return moves
// exactly those back; every key has one owner; load spreads.
func TestRendezvousChurn(t *testing.T) {
	tests := []struct {
		name    string
		members []string
		keys    int
		remove  string
	}{
		{"three replicas, twenty clusters", []string{"hub-0", "hub-1", "hub-2"}, 20, "hub-1"},
		{"five replicas, two hundred clusters", []string{"a", "b", "c", "d", "e"}, 200, "c"},
		{"two replicas, six clusters", []string{"hub-0", "hub-1"}, 6, "hub-0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := clusters(tt.keys)
			before := map[string]string{}
			for _, k := range keys {
				before[k] = Owner(k, tt.members)
			}
			rest := slices.DeleteFunc(slices.Clone(tt.members), func(m string) bool { return m == tt.remove })
			for _, k := range keys {
				after := Owner(k, rest)
				if before[k] != tt.remove && after != before[k] {
					t.Errorf("%s moved from %s to %s although %s stayed", k, before[k], after, before[k])
				}
				if after == tt.remove {
					t.Errorf("%s still owned by the removed %s", k, tt.remove)
				}
			}
			for _, k := range keys {
				if back := Owner(k, tt.members); back != before[k] {
					t.Errorf("%s: owner %s after the return, was %s", k, back, before[k])
				}
			}
			a := Assign(keys, tt.members)
			total := 0
			for m, ks := range a {
				total += len(ks)
				if len(ks) == 0 {
					t.Errorf("%s owns nothing of %d keys", m, tt.keys)
				}
			}
			if total != tt.keys {
				t.Errorf("assigned %d keys, want %d", total, tt.keys)
			}
			t.Logf("load: %v", func() map[string]int {
				out := map[string]int{}
				for m, ks := range a {
					out[m] = len(ks)
				}
				return out
			}())
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func key(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// waitFor polls cond until it holds or a generous bound passes; the time
// taken is reported, never asserted.
func waitFor(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > time.Minute {
			t.Fatalf("%s: not within a minute", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// TestRingOnLoopback: three replicas gossip (encrypted); a replica that
// crashes loses its clusters to the survivors, and gets them back on its
// return; a replica with another key cannot join.
func TestRingOnLoopback(t *testing.T) {
	k := key(t)
	var rs []*Ring
	var addrs []string
	for i := range 3 {
		addr := freeAddr(t)
		var join []string
		if i > 0 {
			join = addrs[:1]
		}
		r, err := Join(Config{Name: fmt.Sprintf("hub-%d", i), Bind: addr, Join: join, Key: k, API: "http://" + addr})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Shutdown() })
		rs, addrs = append(rs, r), append(addrs, addr)
	}
	all := []string{"hub-0", "hub-1", "hub-2"}
	for _, r := range rs {
		waitFor(t, r.Name()+" sees three members", func() bool { return slices.Equal(r.Live(), all) })
	}
	keys := clusters(20)
	victim := rs[0].Owner(keys[0])
	var vi int
	for i, r := range rs {
		if r.Name() == victim {
			vi = i
		}
	}
	rs[vi].Shutdown() // a crash: no leave message
	var survivors []*Ring
	for i, r := range rs {
		if i != vi {
			survivors = append(survivors, r)
		}
	}
	took := waitFor(t, "survivors drop "+victim, func() bool {
		for _, r := range survivors {
			if r.Owner(keys[0]) == victim {
				return false
			}
		}
		return true
	})
	t.Logf("%s crashed: %s moved to %s after %s", victim, keys[0], survivors[0].Owner(keys[0]), took.Round(time.Millisecond))
	if a, b := survivors[0].Owner(keys[0]), survivors[1].Owner(keys[0]); a != b {
		t.Fatalf("survivors disagree on %s: %s and %s", keys[0], a, b)
	}
	// The victim returns under its name and address; its keys come back.
	back, err := Join(Config{Name: victim, Bind: addrs[vi], Join: []string{addrs[(vi+1)%3]}, Key: k})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { back.Shutdown() })
	took = waitFor(t, victim+" owns its keys again", func() bool {
		for _, r := range append(survivors, back) {
			if r.Owner(keys[0]) != victim {
				return false
			}
		}
		return true
	})
	t.Logf("%s returned: %s back after %s", victim, keys[0], took.Round(time.Millisecond))

	if _, err := Join(Config{Name: "intruder", Bind: freeAddr(t), Join: addrs[1:2], Key: key(t)}); err == nil {
		t.Fatal("a replica with another gossip key joined")
	}
	ms := survivors[0].Members()
	if len(ms) != 3 {
		t.Fatalf("members %+v, want three", ms)
	}
	for _, m := range ms {
		if m.State != "alive" {
			t.Errorf("member %s: %s, want alive after the return", m.Name, m.State)
		}
	}
}
