# Portcullis build, test and benchmark entry points.
GO        ?= go
BIN       ?= bin/portcullis
PKGS      := ./...
E2E_BIN   ?= /usr/local/e2e/bin

.PHONY: all build demo run test vet lint fmt-check race fuzz bench e2e e2e-install docker clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/portcullis

## demo: the offline demo (in-process upstream with signed, unsigned and tampered content)
demo: build
	./$(BIN) demo

## run: serve with CONFIG=FILE (`./bin/portcullis config example` prints a starting point)
run: build
	@test -n "$(CONFIG)" || { echo "usage: make run CONFIG=portcullis.yaml  (offline: make demo)"; exit 2; }
	./$(BIN) serve --config $(CONFIG)

## test: formatting, vet, and the unit + handler tests under the race detector
test: fmt-check vet
	$(GO) test -race -count=1 $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

## lint: staticcheck at a pinned version (installed into bin/ on first use)
STATICCHECK_VERSION ?= v0.8.2
lint:
	@test -x bin/staticcheck-$(STATICCHECK_VERSION) || GOBIN=$(CURDIR)/bin/.tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@test -x bin/staticcheck-$(STATICCHECK_VERSION) || mv bin/.tools/staticcheck bin/staticcheck-$(STATICCHECK_VERSION)
	./bin/staticcheck-$(STATICCHECK_VERSION) $(PKGS)

## fuzz: a short run of every fuzz target (FUZZTIME=30s by default)
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

## bench: side-by-side numbers (direct upstream vs through the proxy), printed as a table
bench:
	$(GO) run ./test/bench $(BENCHFLAGS)

## e2e: the real-tool suite (registry, cosign, crane, skopeo, oras, regctl, containerd)
e2e-install:
	./test/e2e/install.sh all

e2e: build
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/run.sh

docker:
	docker build -t portcullis:dev .

clean:
	rm -rf bin
