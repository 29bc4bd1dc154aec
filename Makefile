# flotilla: `make demo` runs the main job, `make test` runs every test.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Lab tests start real API servers; the slowest package needs minutes, not the default 10.
TEST_TIMEOUT ?= 75m
LAB_DIR ?= $(or $(FLOTILLA_LAB_DIR),/tmp/flotilla-lab-demo)

.PHONY: all build emulator lab lab-binaries test unit vet demo clean fuzz

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/flotilla ./cli/flotilla

# The lab's data-plane emulator (no Envoy or istiod runs here).
emulator:
	$(GO) build -o bin/flotilla-emulator ./scenarios/cmd/flotilla-emulator

lab:
	$(GO) build -o bin/flotilla-lab ./scenarios/cmd/flotilla-lab
	./bin/flotilla-lab build --istio >/dev/null

# The lab binaries (kube-apiserver, etcd, ...) come from a cache keyed by
# their versions; a cold build compiles them from the Go module proxy.
lab-binaries: lab

vet:
	$(GO) vet ./...
	cd scenarios/upstream && $(GO) vet ./...
	cd scenarios/istio && $(GO) vet ./... && $(GO) test -count=1 ./...

unit:
	$(GO) test -short -count=1 ./...

test: lab vet build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# Fuzz targets, one at a time (the machine is shared), each for FUZZTIME.
# Plain `go test` (make test, make unit) runs only their seed corpora and the
# inputs kept in each package's testdata/fuzz.
FUZZTIME ?= 1m
FUZZ_TARGETS := \
	./server/spec:FuzzParse \
	./pki:FuzzParseBundle ./pki:FuzzImportRoot ./pki:FuzzCSR ./pki:FuzzAcceptIntermediate \
	./federation:FuzzKubeconfig \
	./server:FuzzAPIRequest \
	./pki/csragent:FuzzCreateCertificate

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -parallel 1; \
	done

demo: build lab emulator
	@FLOTILLA_LAB_DIR=$(LAB_DIR) scenarios/demo.sh

clean:
	rm -rf bin
