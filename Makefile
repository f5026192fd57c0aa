# Portcullis build, test and benchmark entry points.
GO        ?= go
BIN       ?= bin/portcullis
PKGS      := ./...
E2E_BIN   ?= /usr/local/e2e/bin
# Stamped into the binary and shown by `portcullis version`.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: all build demo run test vet lint fmt-check race fuzz bench soak e2e e2e-install e2e-selfcheck conformance mutate docker deploy-check clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/portcullis

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

## soak: mixed load, upstream crashes and hostile clients against the built proxy
## for SOAK_DURATION (10m by default); not part of test. SOAKFLAGS="-out soak.md" also writes the report.
SOAK_DURATION ?= 10m
soak:
	$(GO) run ./test/soak -duration $(SOAK_DURATION) $(SOAKFLAGS)

## e2e: the real-tool suite (registry, cosign, crane, skopeo, oras, regctl, containerd),
## then the OCI conformance comparison, then client authentication (auth.sh), then three
## replicas sharing a real redis-server (scale.sh), then real models (a 2 GiB ModelPack
## model, a KitOps ModelKit) through oras and containerd, timed (models.sh), then images signed
## with cosign and Notary Project signatures through crane and containerd (notation.sh), then a containerd 2.x
## whose image verifier asks the proxy (nodeverifier.sh); all run, all must pass
e2e-install:
	./test/e2e/install.sh all

e2e: build
	@rc=0; \
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/run.sh || rc=1; \
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/conformance.sh || rc=1; \
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/auth.sh || rc=1; \
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/scale.sh || rc=1; \
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/models.sh || rc=1; \
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/notation.sh || rc=1; \
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/nodeverifier.sh || rc=1; \
	exit $$rc

## conformance: the OCI distribution-spec conformance suite (read-only) against the
## upstreams directly and through portcullis, compared test by test
conformance: build
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/conformance.sh

## e2e-selfcheck: the suite against a deny-all and an allow-all proxy; each must fail at least half of its checks
e2e-selfcheck: build
	PATH=$(E2E_BIN):$$PATH PORTCULLIS=$(CURDIR)/$(BIN) ./test/e2e/selfcheck.sh

## mutate: mutation testing (gremlins at a pinned version, installed into bin/) over
## verify/, cache/ and the proxy's decision files, with a score per package.
## Slow, so neither part of test nor of CI. MUTATE_PKGS="cache" runs one package.
GREMLINS_VERSION ?= v0.6.0
MUTATE_PKGS      ?= verify config cache proxy
MUTATE_WORKERS   ?= 1
# A mutant's test run may take this many times the unmutated coverage run
# (gremlins' default of 3 times out good runs on a loaded 2-core machine);
# -count=1 keeps that run from being a cached one of a second.
MUTATE_TIMEOUT_COEFFICIENT ?= 10
# In proxy/ only the files that decide are mutated, not the HTTP plumbing
# nor the packages below it (alert, tuffetch, internal).
MUTATE_PROXY_FILES ?= manifest.go lineage.go blob.go blobshare.go flight.go streams.go evidence.go evidenceshape.go referrers.go summary.go clientauth.go jsonshape.go parsedcache.go passthrough.go revoke.go verdictapi.go shared.go blobcache.go
# In verify/ every file is mutated unless this names some (its summary/
# package is then left out too), e.g. the files a change touched.
MUTATE_VERIFY_FILES ?=
mutate:
	@test -x bin/gremlins-$(GREMLINS_VERSION) || GOBIN=$(CURDIR)/bin/.tools $(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@$(GREMLINS_VERSION)
	@test -x bin/gremlins-$(GREMLINS_VERSION) || mv bin/.tools/gremlins bin/gremlins-$(GREMLINS_VERSION)
	@mkdir -p bin/mutate
	@for pkg in $(MUTATE_PKGS); do \
	  excl=""; \
	  if [ "$$pkg" = proxy ]; then \
	    excl="-E ^internal/ -E ^alert/ -E ^tuffetch/"; \
	    for f in $$(cd proxy && ls *.go | grep -v '_test\.go$$'); do \
	      case " $(MUTATE_PROXY_FILES) " in *" $$f "*) ;; *) excl="$$excl -E ^$$f\$$";; esac; \
	    done; \
	  fi; \
	  if [ "$$pkg" = verify ] && [ -n "$(MUTATE_VERIFY_FILES)" ]; then \
	    excl="-E ^summary/"; \
	    for f in $$(cd verify && ls *.go | grep -v '_test\.go$$'); do \
	      case " $(MUTATE_VERIFY_FILES) " in *" $$f "*) ;; *) excl="$$excl -E ^$$f\$$";; esac; \
	    done; \
	  fi; \
	  echo "== mutate $$pkg"; \
	  GOFLAGS=-count=1 ./bin/gremlins-$(GREMLINS_VERSION) unleash --workers $(MUTATE_WORKERS) \
	    --timeout-coefficient $(MUTATE_TIMEOUT_COEFFICIENT) -o bin/mutate/$$pkg.json $$excl $(CURDIR)/$$pkg || exit 1; \
	done
	@echo; echo "mutation score per package (efficacy = killed / (killed + lived)):"
	@for pkg in $(MUTATE_PKGS); do \
	  python3 -c 'import json, sys; r = json.load(open(sys.argv[2])); \
	    st = [m["status"] for f in r["files"] for m in f["mutations"]]; \
	    print("  %-7s efficacy %6.2f%%  mutant coverage %6.2f%%  killed %d, lived %d, timed out %d, not covered %d, not viable %d" % ( \
	      sys.argv[1], r["test_efficacy"], r["mutations_coverage"], r["mutants_killed"], r["mutants_lived"], \
	      st.count("TIMED OUT"), r["mutants_not_covered"], r["mutants_not_viable"]))' $$pkg bin/mutate/$$pkg.json; \
	done

docker:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t portcullis:dev .

## deploy-check: render deploy/ with kustomize and decode every object strictly into
## the Kubernetes API types (test/deploy, a module of its own); kubeconform (pinned,
## installed into bin/) validates against the JSON schemas too when it can download
## them or KUBECONFORM_SCHEMA_LOCATION names a mirror, and is skipped, saying so, when not
KUBECONFORM_VERSION ?= v0.8.0
deploy-check:
	@mkdir -p bin
	@test -x bin/kubeconform-$(KUBECONFORM_VERSION) || GOBIN=$(CURDIR)/bin/.tools $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	@test -x bin/kubeconform-$(KUBECONFORM_VERSION) || mv bin/.tools/kubeconform bin/kubeconform-$(KUBECONFORM_VERSION)
	@cd test/deploy && KUBECONFORM=$(CURDIR)/bin/kubeconform-$(KUBECONFORM_VERSION) $(GO) test -count=1 -v ./... > $(CURDIR)/bin/deploy-check.log 2>&1; \
	  rc=$$?; grep -v '^=== ' $(CURDIR)/bin/deploy-check.log; exit $$rc

clean:
	rm -rf bin
