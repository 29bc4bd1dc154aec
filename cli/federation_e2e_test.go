package cli_test

import (
	"bytes"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotillamesh/flotilla/server"
)

// TestFederationRotateCommand runs `flotilla federation rotate` against the
// lab: embedded, --cluster west replaces west's reader token only, prints
// -o json with the old token refused and progress lines on stderr; a
// cluster outside the mesh fails naming it; status lists each credential's
// expiry and next renewal; through a running hub (--hub), the rotation of
// every reader is served by POST /api/v1/federation/rotate.
func TestFederationRotateCommand(t *testing.T) {
	l := testLab.Get(t)
	e := appliedEnv(t, l)
	decode := func(t *testing.T, out string) server.ReaderRotation {
		t.Helper()
		var r server.ReaderRotation
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("rotate -o json: %v\n%s", err, out)
		}
		return r
	}

	out, stderr, code := e.run(t, "federation", "rotate", "--cluster", "west", "--settle", "100ms", "-o", "json")
	if code != 0 {
		t.Fatalf("rotate --cluster west: exit %d: %s\n%s", code, stderr, out)
	}
	r := decode(t, out)
	// The lab is shared by the package's tests, each with a hub of its own,
	// so west's reader may hold tokens other hubs minted: rotation revokes
	// those too. At least the one this hub held must go.
	if len(r.Readers) != 1 || r.Readers[0].Cluster != "west" || !r.Readers[0].OldTokenRefused || len(r.Readers[0].Revoked) == 0 {
		t.Errorf("rotate --cluster west: %+v, want west's old token revoked and refused", r.Readers)
	}
	for _, want := range []string{"west", "token issued (rotated on demand", "revoked", "refused"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, stderr)
		}
	}

	_, stderr, code = e.run(t, "federation", "rotate", "--cluster", "nowhere")
	if code == 0 || !strings.Contains(stderr, "nowhere") {
		t.Errorf("rotate --cluster nowhere: exit %d, stderr %q; want a failure naming the cluster", code, stderr)
	}

	out, stderr, code = e.run(t, "status")
	if code != 0 {
		t.Fatalf("status: %s", stderr)
	}
	for _, want := range []string{"READER CREDENTIAL OF", "NEXT RENEWAL", "east", "west"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	token, ca := filepath.Join(e.dir, "hub.token"), filepath.Join(e.dir, "hub-ca.pem")
	srv := e.cmd("server", "--listen", addr, "--token-file", token, "--tls-ca-out", ca, "--interval", "0")
	var srvLog bytes.Buffer
	srv.Stderr = &srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		_ = srv.Wait()
	}()
	hub := []string{"--hub", "https://" + addr, "--hub-token-file", token, "--hub-ca", ca}
	deadline := time.Now().Add(30 * time.Second)
	for { // the hub serves once its token file and CA are written
		_, stderr, code = e.run(t, append(hub, "status")...)
		if code == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if code != 0 {
		t.Fatalf("status through the hub: %s\nserver log: %s", stderr, srvLog.String())
	}
	out, stderr, code = e.run(t, append(hub, "federation", "rotate", "--settle", "100ms", "-o", "json")...)
	if code != 0 {
		t.Fatalf("rotate through the hub: exit %d: %s\n%s\nserver log: %s", code, stderr, out, srvLog.String())
	}
	r = decode(t, out)
	if len(r.Readers) != 2 {
		t.Fatalf("rotate through the hub: %+v, want east's and west's", r.Readers)
	}
	for _, rr := range r.Readers {
		if !rr.OldTokenRefused || len(rr.Revoked) == 0 || rr.Error != "" {
			t.Errorf("rotate through the hub: %s: %+v", rr.Cluster, rr)
		}
	}
}
