package state

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The test binary doubles as a second process: with childEnv set, TestMain
// runs a child role instead of the tests.
const childEnv = "FLOTILLA_STATE_TEST_CHILD"

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(child(role, os.Getenv("FLOTILLA_STATE_TEST_PATH")))
	}
	os.Exit(m.Run())
}

// child opens the state as a writer and reports on stdout. "hold" keeps it
// open until stdin closes; "hold-tx" stops inside a transaction that has
// written a CA and two intermediates, and waits there to be killed; "open"
// tries once and prints the error.
func child(role, path string) int {
	ctx := context.Background()
	key, _, err := ResolveKey("", os.Getenv)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	s, err := Open(ctx, path, Options{Key: key})
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	defer s.Close()
	switch role {
	case "hold":
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
	case "hold-tx":
		err := s.Update(ctx, func(tx *Tx) error {
			if err := tx.InitCA(CA{RootCertPEM: []byte("root"), Source: CAGenerated}, []byte("root key")); err != nil {
				return err
			}
			for _, c := range []string{"east", "west"} {
				if err := tx.PutIntermediate(c, []byte("cert "+c), []byte("key "+c)); err != nil {
					return err
				}
			}
			fmt.Println("ready")
			io.Copy(io.Discard, os.Stdin)
			return nil
		})
		if err != nil {
			fmt.Println("error:", err)
		}
	case "open":
		fmt.Println("opened")
	}
	return 0
}

type childProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startChild runs role against path and waits for its first line of output.
func startChild(t *testing.T, role, path string, key *Key) (*childProc, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+role, "FLOTILLA_STATE_TEST_PATH="+path, KeyEnv+"=")
	if key != nil {
		cmd.Env = append(cmd.Env, KeyEnv+"="+key.Encode())
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		c.stdin.Close()
		c.cmd.Process.Kill()
		c.cmd.Wait()
	})
	line, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("child %s: %v", role, err)
	}
	return c, strings.TrimSpace(line)
}

func (c *childProc) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.cmd.Wait()
}

func newKey(t *testing.T) *Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func openStore(t *testing.T, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// keyPEM returns a real EC private key in PEM, recognizable in raw bytes.
func keyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	key := newKey(t)
	s := openStore(t, path, Options{Key: key})
	rootKey, eastKey, westKey, pendingKey := keyPEM(t), keyPEM(t), keyPEM(t), keyPEM(t)
	expiry := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	observed := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	type hubToken struct{ Hash string }
	err := s.Update(ctx, func(tx *Tx) error {
		return errors.Join(
			tx.PutSpec([]byte("apiVersion: flotilla.dev/v1alpha1\n"), "sha256:abc"),
			tx.InitCA(CA{RootCertPEM: []byte("ROOT"), Source: CAGenerated}, rootKey),
			tx.PutIntermediate("east", []byte("EAST CERT"), eastKey),
			tx.PutIntermediate("west", []byte("WEST CERT"), westKey),
			tx.PutIntermediateCSR("west", []byte("WEST CSR"), pendingKey),
			tx.SetReaderToken("east", ReaderToken{ReadBy: "west", IssuedAt: observed, ExpiresAt: expiry}),
			tx.SetReaderToken("east", ReaderToken{ReadBy: "west", IssuedAt: observed, ExpiresAt: expiry.Add(time.Hour)}),
			tx.SetReaderToken("east", ReaderToken{ReadBy: "north", IssuedAt: observed}),
			tx.SetClusterStatus("east", json.RawMessage(`{"healthy":true}`), observed),
			tx.PutValue("hub/token", hubToken{Hash: "h"}),
			tx.PutSecret("hub/tls-key", []byte("tls key")),
		)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path, Options{Key: key})
	err = s.View(ctx, func(tx *Tx) error {
		sp, ok, err := tx.Spec()
		if err != nil || !ok || sp.Hash != "sha256:abc" || !bytes.HasPrefix(sp.Raw, []byte("apiVersion")) || sp.StoredAt.IsZero() {
			t.Errorf("spec %+v %v %v", sp, ok, err)
		}
		ca, ok, err := tx.CA()
		if err != nil || !ok || string(ca.RootCertPEM) != "ROOT" || !ca.HasRootKey || ca.Source != CAGenerated || string(ca.Bundle()) != "ROOT" {
			t.Errorf("CA %+v %v %v", ca, ok, err)
		}
		if k, err := tx.RootKey(); err != nil || !bytes.Equal(k, rootKey) {
			t.Errorf("root key: %v", err)
		}
		east, ok, err := tx.Cluster("east")
		if err != nil || !ok || string(east.IntermediateCertPEM) != "EAST CERT" || !east.HasIntermediateKey {
			t.Errorf("east %+v %v %v", east, ok, err)
		}
		wantTokens := []ReaderToken{{ReadBy: "west", IssuedAt: observed, ExpiresAt: expiry.Add(time.Hour)}, {ReadBy: "north", IssuedAt: observed}}
		if fmt.Sprint(east.ReaderTokens) != fmt.Sprint(wantTokens) {
			t.Errorf("tokens %v, want %v", east.ReaderTokens, wantTokens)
		}
		if string(east.Status) != `{"healthy":true}` || !east.StatusObservedAt.Equal(observed) {
			t.Errorf("status %s at %v", east.Status, east.StatusObservedAt)
		}
		if k, err := tx.IntermediateKey("east"); err != nil || !bytes.Equal(k, eastKey) {
			t.Errorf("east key: %v", err)
		}
		west, _, _ := tx.Cluster("west")
		if string(west.IntermediateCSRPEM) != "WEST CSR" || string(west.IntermediateCertPEM) != "WEST CERT" {
			t.Errorf("west %+v", west)
		}
		if k, err := tx.IntermediateKey("west"); err != nil || !bytes.Equal(k, westKey) {
			t.Errorf("west key changed by a pending CSR: %v", err)
		}
		if k, err := tx.PendingIntermediateKey("west"); err != nil || !bytes.Equal(k, pendingKey) {
			t.Errorf("west pending key: %v", err)
		}
		all, err := tx.Clusters()
		if err != nil || len(all) != 2 || all[0].Name != "east" || all[1].Name != "west" {
			t.Errorf("clusters %+v %v", all, err)
		}
		var ht hubToken
		if ok, err := tx.Value("hub/token", &ht); !ok || err != nil || ht.Hash != "h" {
			t.Errorf("value %+v %v %v", ht, ok, err)
		}
		if v, ok, err := tx.Secret("hub/tls-key"); !ok || err != nil || string(v) != "tls key" {
			t.Errorf("secret %q %v %v", v, ok, err)
		}
		if _, err := tx.IntermediateKey("north"); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing key: %v, want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The signed CSR comes back: the pending key becomes the intermediate's.
	if err := s.Update(ctx, func(tx *Tx) error { return tx.PutIntermediate("west", []byte("WEST CERT 2"), nil) }); err != nil {
		t.Fatal(err)
	}
	s.View(ctx, func(tx *Tx) error {
		west, _, _ := tx.Cluster("west")
		k, err := tx.IntermediateKey("west")
		if err != nil || !bytes.Equal(k, pendingKey) || west.IntermediateCSRPEM != nil || string(west.IntermediateCertPEM) != "WEST CERT 2" || tx.HasSecret(SecretPendingIntermediateKey("west")) {
			t.Errorf("after signed CSR: %+v, key ok %v, err %v", west, bytes.Equal(k, pendingKey), err)
		}
		return nil
	})
	// A certificate with no key anywhere is refused.
	err = s.Update(ctx, func(tx *Tx) error { return tx.PutIntermediate("north", []byte("NORTH"), nil) })
	if err == nil || !strings.Contains(err.Error(), "cluster north: intermediate certificate without a key") {
		t.Errorf("intermediate without key: %v", err)
	}
}

func TestInitCANeverReplacesTheRoot(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "state.db"), Options{Key: newKey(t)})
	init := func(root string) error {
		return s.Update(ctx, func(tx *Tx) error { return tx.InitCA(CA{RootCertPEM: []byte(root)}, []byte(root+" key")) })
	}
	if err := init("first"); err != nil {
		t.Fatal(err)
	}
	if err := init("second"); !errors.Is(err, ErrCAExists) {
		t.Fatalf("second InitCA: %v, want ErrCAExists", err)
	}
	s.View(ctx, func(tx *Tx) error {
		ca, _, _ := tx.CA()
		k, _ := tx.RootKey()
		if string(ca.RootCertPEM) != "first" || string(k) != "first key" {
			t.Errorf("root replaced: %s / %s", ca.RootCertPEM, k)
		}
		return nil
	})
}

func TestFileModesAndNoKeyInTheClear(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "new", "hub")
	path := filepath.Join(dir, "state.db")
	key := newKey(t)
	s := openStore(t, path, Options{Key: key})
	secret := keyPEM(t)
	err := s.Update(ctx, func(tx *Tx) error {
		return errors.Join(tx.InitCA(CA{RootCertPEM: []byte("ROOT")}, secret), tx.PutIntermediate("east", []byte("C"), secret))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	modes := []struct {
		path string
		want os.FileMode
	}{{dir, 0o700 | os.ModeDir}, {path, 0o600}, {path + ".lock", 0o600}}
	for _, m := range modes {
		fi, err := os.Stat(m.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != m.want {
			t.Errorf("%s: mode %v, want %v", m.path, fi.Mode(), m.want)
		}
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(secret)
	body := strings.Split(strings.TrimSpace(string(secret)), "\n")[1] // a base64 line of the key
	for what, needle := range map[string][]byte{
		"PEM header":         []byte("PRIVATE KEY"),
		"PEM body line":      []byte(body),
		"DER key":            block.Bytes,
		"DER key, base64":    []byte(base64.StdEncoding.EncodeToString(block.Bytes)[:40]),
		"PEM, base64 (JSON)": []byte(base64.StdEncoding.EncodeToString(secret)[:40]),
		"state key":          []byte(key.Encode()),
	} {
		if bytes.Contains(raw, needle) {
			t.Errorf("state file contains the %s in the clear", what)
		}
	}

	// A state whose mode was loosened is tightened again on open.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	openStore(t, path, Options{Key: key}).Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode after reopen %v, want 0600", fi.Mode().Perm())
	}
}

func TestWrongKey(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s := openStore(t, path, Options{Key: newKey(t)})
	if err := s.Update(ctx, func(tx *Tx) error { return tx.PutRootKey([]byte("k")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, open := range []func(context.Context, string, Options) (*Store, error){Open, OpenReadOnly} {
		_, err := open(ctx, path, Options{Key: newKey(t)})
		if !errors.Is(err, ErrWrongKey) {
			t.Fatalf("open with another key: %v, want ErrWrongKey", err)
		}
		if want := "state " + path + ": state key does not match the one this state was sealed with"; err.Error() != want {
			t.Errorf("message %q, want %q", err, want)
		}
	}
}

func TestMissingKey(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	key := newKey(t)

	// No secret sealed yet: no key needed.
	s := openStore(t, path, Options{})
	if err := s.Update(ctx, func(tx *Tx) error { return tx.PutCA(CA{RootCertPEM: []byte("ROOT"), Source: CAOffline}) }); err != nil {
		t.Fatal(err)
	}
	err := s.Update(ctx, func(tx *Tx) error { return tx.PutRootKey([]byte("k")) })
	if !errors.Is(err, ErrKeyRequired) {
		t.Fatalf("sealing without a key: %v, want ErrKeyRequired", err)
	}
	s.Close()

	s = openStore(t, path, Options{Key: key})
	if err := s.Update(ctx, func(tx *Tx) error { return tx.PutRootKey([]byte("k")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()

	_, err = Open(ctx, path, Options{})
	if !errors.Is(err, ErrKeyRequired) {
		t.Fatalf("open sealed state without key: %v, want ErrKeyRequired", err)
	}
	for _, want := range []string{path, "key file", KeyEnv} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not name %q", err, want)
		}
	}

	// Status needs no secret: KeyOptional opens, and only secrets fail.
	ro, err := OpenReadOnly(ctx, path, Options{KeyOptional: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	ro.View(ctx, func(tx *Tx) error {
		if ca, ok, err := tx.CA(); !ok || err != nil || !ca.HasRootKey {
			t.Errorf("CA without key: %+v %v %v", ca, ok, err)
		}
		if _, err := tx.RootKey(); !errors.Is(err, ErrKeyRequired) {
			t.Errorf("root key without key: %v, want ErrKeyRequired", err)
		}
		return nil
	})
}

func TestTamperedOrMovedSecretIsDetected(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	key := newKey(t)
	s := openStore(t, path, Options{Key: key})
	err := s.Update(ctx, func(tx *Tx) error {
		return errors.Join(tx.PutIntermediate("east", []byte("E"), []byte("east key")), tx.PutIntermediate("west", []byte("W"), []byte("west key")))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Edit the file behind the store's back: flip a ciphertext bit of east's
	// key, and put east's sealed key where west's belongs.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSecrets)
		east := bytes.Clone(b.Get([]byte(SecretIntermediateKey("east"))))
		if err := b.Put([]byte(SecretIntermediateKey("west")), bytes.Clone(east)); err != nil {
			return err
		}
		east[len(east)-20] ^= 1
		return b.Put([]byte(SecretIntermediateKey("east")), east)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path, Options{Key: key})
	s.View(ctx, func(tx *Tx) error {
		for _, c := range []string{"east", "west"} {
			k, err := tx.IntermediateKey(c)
			if !errors.Is(err, ErrTampered) || k != nil {
				t.Errorf("%s: got %q, %v; want ErrTampered", c, k, err)
			}
		}
		return nil
	})
}

func TestSecondWriterGetsThePID(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	key := newKey(t)
	holder, line := startChild(t, "hold", path, key)
	if line != "ready" {
		t.Fatalf("child: %s", line)
	}
	pid := holder.cmd.Process.Pid

	_, err := Open(ctx, path, Options{Key: key})
	var inUse *InUseError
	if !errors.As(err, &inUse) || inUse.PID != pid {
		t.Fatalf("second writer: %v, want in use by PID %d", err, pid)
	}
	if want := fmt.Sprintf("state %s is in use by PID %d", path, pid); err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}

	// A reader does not wait for the writer that merely has the state open.
	ro, err := OpenReadOnly(ctx, path, Options{Key: key})
	if err != nil {
		t.Fatalf("read-only open beside a writer: %v", err)
	}
	if err := ro.View(ctx, func(tx *Tx) error { _, _, err := tx.CA(); return err }); err != nil {
		t.Errorf("read beside a writer: %v", err)
	}
	ro.Close()

	// The holder crashes: its lock goes with it, and the stale PID record is
	// replaced by the next holder's.
	holder.kill(t)
	s := openStore(t, path, Options{Key: key})
	rec, err := os.ReadFile(path + ".lock")
	if err != nil || strings.TrimSpace(string(rec)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("lock record %q %v, want this PID %d", rec, err, os.Getpid())
	}
	_, line = startChild(t, "open", path, key)
	if want := fmt.Sprintf("error: state %s is in use by PID %d", path, os.Getpid()); line != want {
		t.Errorf("child after crash: %q, want %q", line, want)
	}
	s.Close()
	if _, line = startChild(t, "open", path, key); line != "opened" {
		t.Errorf("child after close: %q", line)
	}
}

func TestReaderWaitsOnlyForATransactionInFlight(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	key := newKey(t)
	openStore(t, path, Options{Key: key}).Close()
	holder, line := startChild(t, "hold-tx", path, key)
	if line != "ready" {
		t.Fatalf("child: %s", line)
	}
	_, err := OpenReadOnly(ctx, path, Options{Key: key, Timeout: 100 * time.Millisecond})
	var inUse *InUseError
	if !errors.As(err, &inUse) || inUse.PID != holder.cmd.Process.Pid {
		t.Fatalf("reader during a transaction: %v, want in use by PID %d", err, holder.cmd.Process.Pid)
	}
}

func TestKillInsideATransactionLeavesTheOldState(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	key := newKey(t)
	s := openStore(t, path, Options{Key: key})
	if err := s.Update(ctx, func(tx *Tx) error { return tx.PutSpec([]byte("old"), "sha256:old") }); err != nil {
		t.Fatal(err)
	}
	s.Close()

	holder, line := startChild(t, "hold-tx", path, key)
	if line != "ready" {
		t.Fatalf("child: %s", line)
	}
	holder.kill(t)

	s = openStore(t, path, Options{Key: key})
	s.View(ctx, func(tx *Tx) error {
		if _, ok, _ := tx.CA(); ok {
			t.Error("CA of the killed transaction is visible")
		}
		if cs, _ := tx.Clusters(); len(cs) != 0 {
			t.Errorf("intermediates of the killed transaction are visible: %+v", cs)
		}
		if sp, ok, _ := tx.Spec(); !ok || sp.Hash != "sha256:old" {
			t.Errorf("old spec lost: %+v", sp)
		}
		return nil
	})
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "state.db"), Options{Key: newKey(t)})
	boom := errors.New("east: write secret istio-system/cacerts: boom")
	err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.InitCA(CA{RootCertPEM: []byte("R")}, []byte("k")); err != nil {
			return err
		}
		if err := tx.PutIntermediate("east", []byte("E"), []byte("k")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("update: %v", err)
	}
	s.View(ctx, func(tx *Tx) error {
		_, okCA, _ := tx.CA()
		_, okEast, _ := tx.Cluster("east")
		if okCA || okEast || tx.HasSecret(SecretRootKey) {
			t.Errorf("failed update left CA=%v east=%v rootKey=%v", okCA, okEast, tx.HasSecret(SecretRootKey))
		}
		return nil
	})
}

func TestConcurrentUpdates(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "state.db"), Options{Key: newKey(t)})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Go(func() {
			name := fmt.Sprintf("c%02d", i)
			errs <- s.Update(ctx, func(tx *Tx) error { return tx.PutIntermediate(name, []byte(name), []byte("key "+name)) })
			errs <- s.View(ctx, func(tx *Tx) error { _, err := tx.Clusters(); return err })
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s.View(ctx, func(tx *Tx) error {
		if cs, _ := tx.Clusters(); len(cs) != 20 {
			t.Errorf("%d clusters, want 20", len(cs))
		}
		return nil
	})
}

func TestJournalIsBoundedNewestFirst(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "state.db"), Options{JournalLimit: 5})
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 12 {
		err := s.Update(ctx, func(tx *Tx) error {
			id, err := tx.AppendApply(ApplyRecord{Start: start.Add(time.Duration(i) * time.Minute), SpecHash: fmt.Sprintf("h%d", i)})
			if err != nil {
				return err
			}
			if id != uint64(i+1) {
				t.Errorf("id %d, want %d", id, i+1)
			}
			return errors.Join(
				tx.AddApplyStep(id, StepRecord{Cluster: "east", Step: "cacerts", Result: "created"}),
				tx.AddApplyStep(id, StepRecord{Cluster: "west", Step: "cacerts", Result: "failed", Error: "west: write secret istio-system/cacerts: forbidden"}),
				tx.FinishApply(id, start.Add(time.Duration(i)*time.Minute+time.Second), "failed"),
			)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.View(ctx, func(tx *Tx) error {
		all, err := tx.Applies(0)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, a := range all {
			ids = append(ids, a.ID)
		}
		if fmt.Sprint(ids) != "[12 11 10 9 8]" {
			t.Errorf("journal ids %v, want [12 11 10 9 8]", ids)
		}
		newest := all[0]
		if newest.SpecHash != "h11" || len(newest.Steps) != 2 || newest.Steps[1].Error == "" || newest.Result != "failed" || newest.End.IsZero() {
			t.Errorf("newest entry %+v", newest)
		}
		if two, _ := tx.Applies(2); len(two) != 2 || two[1].ID != 11 {
			t.Errorf("Applies(2) = %+v", two)
		}
		if _, ok, _ := tx.ApplyRecord(7); ok {
			t.Error("entry 7 was not trimmed")
		}
		return nil
	})
	err := s.Update(ctx, func(tx *Tx) error { return tx.AddApplyStep(3, StepRecord{Step: "x"}) })
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("step on a trimmed entry: %v, want ErrNotFound", err)
	}
}

func TestReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := OpenReadOnly(ctx, filepath.Join(dir, "missing.db"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only open of a missing state: %v, want not exist", err)
	}
	path := filepath.Join(dir, "state.db")
	openStore(t, path, Options{}).Close()
	ro, err := OpenReadOnly(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Update(ctx, func(tx *Tx) error { return nil }); !errors.Is(err, ErrReadOnly) {
		t.Errorf("update on read-only: %v, want ErrReadOnly", err)
	}
	if _, err := os.Stat(path + ".lock"); err != nil {
		t.Errorf("lock file: %v", err)
	}
	ro.Close()
	if err := ro.View(ctx, func(tx *Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("view after close: %v, want ErrClosed", err)
	}
}

func TestKeys(t *testing.T) {
	k := newKey(t)
	enc := k.Encode()
	if back, err := ParseKey(" " + enc + "\n"); err != nil || back.Encode() != enc {
		t.Errorf("ParseKey round trip: %v", err)
	}
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%+v", k), fmt.Sprintf("%#v", k), fmt.Sprintf("%v", Options{Key: k})} {
		if strings.Contains(s, enc) || strings.Contains(s, fmt.Sprint(k.b[:4])) {
			t.Errorf("key printed: %s", s)
		}
	}
	bad := []struct{ in, want string }{
		{"not base64!", "state key is not base64"},
		{base64.StdEncoding.EncodeToString(make([]byte, 16)), "state key is 16 bytes, want 32"},
	}
	for _, b := range bad {
		if _, err := ParseKey(b.in); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseKey(%q): %v, want %q", b.in, err, b.want)
		}
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "state.key")
	if err := WriteKeyFile(file, k); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", fi.Mode().Perm())
	}
	if err := WriteKeyFile(file, newKey(t)); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("overwrite: %v", err)
	}
	env := map[string]string{KeyEnv: newKey(t).Encode()}
	getenv := func(k string) string { return env[k] }
	if got, src, err := ResolveKey(file, getenv); err != nil || got.Encode() != enc || src != file {
		t.Errorf("key file must win over %s: %v %v", KeyEnv, src, err)
	}
	if got, src, err := ResolveKey("", getenv); err != nil || got.Encode() != env[KeyEnv] || src != KeyEnv {
		t.Errorf("env key: %v %v", src, err)
	}
	if got, _, err := ResolveKey("", func(string) string { return "" }); got != nil || err != nil {
		t.Errorf("no key: %v %v", got, err)
	}
	if _, _, err := ResolveKey("", func(string) string { return "short" }); err == nil || !strings.Contains(err.Error(), KeyEnv) {
		t.Errorf("bad env key: %v", err)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeyFile(file); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("readable key file: %v", err)
	}
}

// BenchmarkUpdate measures one sealed write transaction, including opening
// and closing the bbolt file that the store does around idle periods.
func BenchmarkUpdate(b *testing.B) {
	ctx := context.Background()
	key, _ := GenerateKey()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "state.db"), Options{Key: key})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	secret := bytes.Repeat([]byte("k"), 3243) // an RSA-4096 key in PEM
	for i := 0; b.Loop(); i++ {
		err := s.Update(ctx, func(tx *Tx) error { return tx.PutIntermediate(fmt.Sprintf("c%d", i%50), []byte("cert"), secret) })
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkView measures one read transaction that unseals a key.
func BenchmarkView(b *testing.B) {
	ctx := context.Background()
	key, _ := GenerateKey()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "state.db"), Options{Key: key})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Update(ctx, func(tx *Tx) error { return tx.PutIntermediate("east", []byte("cert"), []byte("key")) }); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := s.View(ctx, func(tx *Tx) error { _, err := tx.IntermediateKey("east"); return err }); err != nil {
			b.Fatal(err)
		}
	}
}
