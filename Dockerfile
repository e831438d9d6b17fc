# One image for every role: the subcommand picks it (receiver, recorder, analytics, moderator, forwarder, serve, sim, tap).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The release and commit `audiofan version` prints (.git is not copied in): docker build --build-arg VERSION=… --build-arg COMMIT=$(git rev-parse HEAD)
ARG VERSION=devel
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/audiofan ./cmd/audiofan && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=devel
ARG COMMIT=unknown
# The same as `audiofan version`; the contract's version is codec.ContractVersion (a test keeps them equal).
LABEL org.opencontainers.image.title="audiofan" \
      org.opencontainers.image.description="ACS Call Automation audio fan-out over NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      dev.audiofan.contract.version="1.1.0"
COPY --from=build /out/audiofan /usr/local/bin/audiofan
# The data folder belongs to the non-root user, so a named volume mounted on it (initialised from the image) is writable.
COPY --from=build --chown=65532:65532 /out/data /data
# Containers listen on every interface; the roles read everything else from the environment.
ENV AUDIOFAN_HTTP_ADDR=:8080 AUDIOFAN_DATA_DIR=/data
# By number (distroless's nonroot): Kubernetes' runAsNonRoot can only check a numeric user.
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 CMD ["/usr/local/bin/audiofan", "health"]
ENTRYPOINT ["/usr/local/bin/audiofan"]
CMD ["serve"]
