# syntax=docker/dockerfile:1

# The broker's container image: one static binary on a base that holds
# nothing else (no shell, no package manager), run as an unprivileged user,
# its state on a volume at /data.
#
#   docker build -t gannet .
#   docker run -p 1883:1883 -p 8080:8080 -v gannet-data:/data gannet
#
# Flags after the image name replace the default arguments below, so give
# --data-dir=/data again with them. deploy/kubernetes/ runs the image as a
# StatefulSet (deploy/README.md, "Kubernetes").

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first: a change to the code alone reuses this layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS TARGETARCH
# CGO_ENABLED=0 makes a static binary, which needs no C library in the
# image (names are looked up by Go's own resolver); -trimpath keeps the
# build machine's paths out of it, -s -w the symbol tables.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/gannet ./cmd/gannet && \
    mkdir -p /out/data

# distroless/static: CA certificates, time zones and an /etc/passwd with
# the nonroot user (65532); nothing to run but the broker.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gannet /usr/local/bin/gannet
# The data directory belongs to the broker's user, so that a new named
# volume mounted on it (it takes the directory's owner) is writable.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
VOLUME ["/data"]
# MQTT, HTTP (/healthz, /readyz, /metrics, /api/v1), the cluster link and
# gossip (TCP and UDP), as deploy/kubernetes/ uses them.
EXPOSE 1883 8080 7946 7947 7947/udp
ENTRYPOINT ["/usr/local/bin/gannet"]
CMD ["--data-dir=/data"]
