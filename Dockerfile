# Passport in a container: `docker build -t passport .`, then e.g.
#   docker run -v passport-data:/var/lib/passport \
#     -v ./passport.toml:/etc/passport/passport.toml:ro -e PASSPORT_CONFIG=/etc/passport/passport.toml \
#     -e PASSPORT_SLACK__BOT_TOKEN -e PASSPORT_SLACK__SIGNING_SECRET -p 8080:8080 passport
# The configuration file is optional: PASSPORT_<SECTION>__<FIELD> variables
# alone are enough. The image sets no PASSPORT_ variable of its own, so nothing
# in it silently overrides a mounted file. Secrets come from the environment,
# never from the image.

# The toolchain Passport is tested with and the Debian release it runs on,
# pinned by version. To pin by digest as well, pass e.g.
#   --build-arg RUST_IMAGE=rust:1.95.0-bookworm@sha256:… --build-arg RUNTIME_IMAGE=debian:bookworm-slim@sha256:…
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:12-slim
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit. (The real build.rs,
# which renders the SSM documents from manifests/ssm, comes with the sources.)
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > build.rs \
    && cargo fetch --locked \
    && cargo build --release --locked --bin passport \
    && rm -rf src build.rs target/release/.fingerprint/passport-* target/release/build/passport-* \
        target/release/deps/passport-* target/release/deps/libpassport-*
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY manifests ./manifests
RUN cargo build --release --locked --bin passport

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 passport \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/passport --create-home passport
COPY --from=build /src/target/release/passport /usr/local/bin/passport
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# The database (./passport.db by default) lives on this volume.
WORKDIR /var/lib/passport
VOLUME ["/var/lib/passport"]
# /healthz on this port answers 200 while the process and its database answer;
# /readyz while the database takes writes and the chat platform (and AWS, with
# [aws]) answers.
EXPOSE 8080
# `passport healthcheck` asks /healthz itself: no curl in the image.
HEALTHCHECK --interval=30s --timeout=6s --start-period=20s --retries=3 \
    CMD ["passport", "healthcheck"]
ENTRYPOINT ["passport"]
CMD ["serve"]
