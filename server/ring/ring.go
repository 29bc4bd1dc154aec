package ring

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures one replica's membership.
type Config struct {
	// Name identifies the replica in the ring (a pod name); unique.
	Name string
	// Bind is the gossip address, host:port (TCP and UDP).
	Bind string
	// Advertise is the address others reach this replica at; "" is Bind.
	Advertise string
	// Join are other replicas' gossip addresses; none starts a new ring.
	Join []string
	// Key encrypts and authenticates gossip (AES, 16, 24 or 32 bytes).
	Key []byte
	// API is this replica's API URL, gossiped so that members can be listed.
	API string
	// LogOutput receives memberlist's own log lines; nil discards them.
	LogOutput io.Writer
	// RetryJoin keeps trying cfg.Join in the background when nobody answers
	// at start (replicas of a StatefulSet start together), instead of failing.
	RetryJoin bool
}

// Member is one replica as this replica sees it.
type Member struct {
	Name   string    `json:"name"`
	Addr   string    `json:"gossip"`
	API    string    `json:"api,omitempty"`
	State  string    `json:"state"` // alive, suspect, or gone (left or declared dead)
	Since  time.Time `json:"since"`
	IsSelf bool      `json:"self,omitempty"`
}

// Ring is a replica's membership in the ring.
type Ring struct {
	ml      *memberlist.Memberlist
	name    string
	stopped atomic.Bool

	mu      sync.Mutex
	members map[string]*Member
	changed chan struct{} // closed and replaced on every membership change
}

type meta struct {
	API string `json:"api,omitempty"`
}

// Join starts gossip on cfg.Bind and joins the replicas in cfg.Join. With
// none answering it fails, unless cfg.Join is empty (a new ring).
func Join(cfg Config) (*Ring, error) {
	if cfg.Name == "" {
		return nil, errors.New("ring: a replica needs a name")
	}
	if n := len(cfg.Key); n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("ring: gossip key is %d bytes, want 16, 24 or 32", n)
	}
	host, port, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("ring: --gossip %s: %w", cfg.Bind, err)
	}
	r := &Ring{name: cfg.Name, members: map[string]*Member{}, changed: make(chan struct{})}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	if cfg.Advertise != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(cfg.Advertise); err != nil {
			return nil, fmt.Errorf("ring: advertise %s: %w", cfg.Advertise, err)
		}
	}
	mc.SecretKey = cfg.Key
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.Events = &events{r: r}
	md, _ := json.Marshal(meta{API: cfg.API})
	mc.Delegate = &delegate{meta: md}
	if cfg.LogOutput == nil {
		cfg.LogOutput = io.Discard
	}
	mc.Logger = log.New(cfg.LogOutput, "memberlist: ", log.LstdFlags)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("ring: gossip on %s: %w", cfg.Bind, err)
	}
	r.ml = ml
	if len(cfg.Join) > 0 {
		if _, err := ml.Join(cfg.Join); err != nil {
			if !cfg.RetryJoin {
				ml.Shutdown()
				return nil, fmt.Errorf("ring: join %s: %w", strings.Join(cfg.Join, ","), err)
			}
			go r.retryJoin(cfg.Join)
		}
	}
	return r, nil
}

// retryJoin joins the others once one of them answers, or until shutdown.
func (r *Ring) retryJoin(addrs []string) {
	for {
		time.Sleep(2 * time.Second)
		if r.ml.NumMembers() > 1 {
			return // someone joined us
		}
		if r.stopped.Load() {
			return
		}
		if _, err := r.ml.Join(addrs); err == nil {
			return
		}
	}
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return h, port, nil
}

// Name is this replica's name.
func (r *Ring) Name() string { return r.name }

// Live are the names of the members taking work: alive or merely suspect
// (a suspect that answers again keeps its keys; one declared dead loses them).
func (r *Ring) Live() []string {
	var out []string
	for _, n := range r.ml.Members() {
		out = append(out, n.Name)
	}
	slices.Sort(out)
	return out
}

// Owner is the live member that owns key.
func (r *Ring) Owner(key string) string { return Owner(key, r.Live()) }

// Owns reports whether this replica owns key.
func (r *Ring) Owns(key string) bool { return r.Owner(key) == r.name }

// Members lists every member seen since start, the dead and departed too.
func (r *Ring) Members() []Member {
	states := map[string]string{}
	for _, n := range r.ml.Members() {
		states[n.Name] = stateName(n.State)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Member
	for _, m := range r.members {
		c := *m
		if s, ok := states[c.Name]; ok {
			c.State = s
		}
		c.IsSelf = c.Name == r.name
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Changed is closed at the next membership change.
func (r *Ring) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Leave tells the others this replica is going (its keys move at once,
// without waiting for failure detection), then stops gossip.
func (r *Ring) Leave(timeout time.Duration) error {
	r.stopped.Store(true)
	err := r.ml.Leave(timeout)
	return errors.Join(err, r.ml.Shutdown())
}

// Shutdown stops gossip without a word, as a crash would.
func (r *Ring) Shutdown() error {
	r.stopped.Store(true)
	return r.ml.Shutdown()
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	default:
		return "gone"
	}
}

func (r *Ring) note(n *memberlist.Node, state string) {
	var md meta
	_ = json.Unmarshal(n.Meta, &md)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.members[n.Name] = &Member{Name: n.Name, Addr: n.Address(), API: md.API, State: state, Since: time.Now().UTC()}
	close(r.changed)
	r.changed = make(chan struct{})
}

type events struct{ r *Ring }

func (e *events) NotifyJoin(n *memberlist.Node) { e.r.note(n, "alive") }

// NotifyLeave: memberlist does not say whether the member left or died.
func (e *events) NotifyLeave(n *memberlist.Node)  { e.r.note(n, "gone") }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.r.note(n, stateName(n.State)) }

type delegate struct{ meta []byte }

func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// ReadKeyFile reads a gossip key: base64 of 16, 24 or 32 random bytes, in a
// file only its owner can read.
func ReadKeyFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("gossip key file %s has mode %04o; others must not read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: not base64", path)
	}
	if n := len(k); n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("gossip key file %s: %d bytes, want 16, 24 or 32 (base64 of random bytes)", path, n)
	}
	return k, nil
}
