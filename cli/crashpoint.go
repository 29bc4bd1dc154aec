package cli

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// CrashEnv makes flotilla kill itself (SIGKILL) at the Nth step of an apply
// (server.Hub.Hook: a progress line or a journal entry), for the crash test.
// "list" prints every point instead, so that a test can choose among them.
const CrashEnv = "FLOTILLA_TEST_CRASH_AT"

// crashHook returns the hook CrashEnv asks for, or nil.
func crashHook() func(point string) {
	v := os.Getenv(CrashEnv)
	if v == "" {
		return nil
	}
	list := v == "list"
	at, err := strconv.Atoi(v)
	if !list && (err != nil || at < 1) {
		fmt.Fprintf(os.Stderr, "%s=%q: want a step number >= 1 or list; ignored\n", CrashEnv, v)
		return nil
	}
	var mu sync.Mutex
	n := 0
	return func(point string) {
		mu.Lock()
		defer mu.Unlock()
		n++
		if list {
			fmt.Fprintf(os.Stderr, "crash point %d: %s\n", n, point)
			return
		}
		if n == at {
			fmt.Fprintf(os.Stderr, "crash point %d: %s: killing flotilla\n", n, point)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // SIGKILL is not deferred; nothing runs after it
		}
	}
}
