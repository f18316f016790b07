# syntax=docker/dockerfile:1
# The operator's image, for users with Docker (or any OCI builder):
#   docker build -t portcullis:0.1.0 .
# scripts/image builds the same image without a container engine (see README).
#
# Build stage: the release binary, with the dependency build cached in a layer of its own.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY crds ./crds
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portcullis \
 && cp target/release/portcullis /portcullis

# Final stage: distroless "cc" holds exactly what the binary links (glibc, libgcc), CA
# certificates and the non-root user 65532; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /portcullis /usr/local/bin/portcullis
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run"]
