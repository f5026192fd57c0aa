# syntax=docker/dockerfile:1
#
# Base images. Tags are the defaults; release builds pin both by digest so
# the image cannot change under the same tag, for example:
#
#   docker build \
#     --build-arg GO_IMAGE=golang:1.26@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:<digest> \
#     --build-arg VERSION=$(git describe --tags --always) --build-arg COMMIT=$(git rev-parse HEAD) .
#
# (`crane digest golang:1.26` prints the digest a tag points at today. The
# defaults stay tags so that a plain `make docker` builds; a release build
# passes the digests it has checked.)
ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/portcullis ./cmd/portcullis

# distroless/static: no shell, runs as an unprivileged user; the proxy needs
# only its binary, its config and the CA bundle for upstream TLS.
FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG COMMIT=unknown
ARG RUNTIME_IMAGE
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Pull-through OCI registry proxy that serves only content whose signatures and attestations verify" \
      org.opencontainers.image.source="https://github.com/portcullis-oci/portcullis" \
      org.opencontainers.image.url="https://github.com/portcullis-oci/portcullis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build /out/portcullis /usr/local/bin/portcullis
USER nonroot:nonroot
EXPOSE 5000 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.yaml"]
