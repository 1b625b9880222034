# The Serin controller image: one static binary and the CA certificates on an empty
# base, run as a non-root user; deploy/controller.yaml adds a read-only root
# filesystem, no capabilities and the RuntimeDefault seccomp profile.
#
#   docker build -t ghcr.io/serin-dev/serin:0.1.0 .
#
# `make image` produces the same layout without a Docker engine (hack/build-image,
# with umoci), which is how the test bed builds it; the two are kept equal by
# e2e/tests/image.rs.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release \
      --target "$target" -p serin --bin serin \
 && install -D -m 0755 "target/$target/release/serin" /out/usr/local/bin/serin \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt

FROM scratch
COPY --from=build /out/ /
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/local/bin/serin"]
CMD ["controller"]
LABEL org.opencontainers.image.source="https://github.com/serin-dev/serin"
