# One image for every role: the subcommand picks it (receiver, recorder, analytics, moderator, serve, sim, tap).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/audiofan ./cmd/audiofan && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
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
