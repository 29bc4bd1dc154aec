package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server"
	"github.com/flotillamesh/flotilla/server/state"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServerCommand runs `flotilla server` on a fresh state: it creates the
// token file, writes the CA for clients to pin, answers an authenticated
// client, and stops when its context ends, closing the state.
func TestServerCommand(t *testing.T) {
	dir := t.TempDir()
	key, err := state.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	open := func(ctx context.Context) (*server.Hub, func(), error) {
		st, err := state.Open(ctx, filepath.Join(dir, "state.db"), state.Options{Key: key})
		if err != nil {
			return nil, nil, err
		}
		return &server.Hub{Store: st}, func() { st.Close(); close(closed) }, nil
	}
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.pem")
	cmd := newServerCommand(open, nil, nil)
	logs := &syncBuffer{}
	cmd.SetErr(logs)
	cmd.SetArgs([]string{"--listen", "127.0.0.1:0", "--token-file", tokenFile, "--tls-ca-out", caFile, "--interval", "1h"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	addr := ""
	for addr == "" {
		for line := range strings.Lines(logs.String()) {
			var rec struct{ Msg, Address string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "hub serving" {
				addr = rec.Address
			}
		}
		select {
		case err := <-done:
			t.Fatalf("server exited: %v\n%s", err, logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := server.NewClient(server.ClientOptions{URL: "https://" + addr, Token: strings.TrimSpace(string(tok)), CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Journal(ctx, 0); err != nil {
		t.Fatalf("journal over the API: %v", err)
	}
	if strings.Contains(logs.String(), strings.TrimSpace(string(tok))) {
		t.Error("the token appears in the logs")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}
	<-closed
}
