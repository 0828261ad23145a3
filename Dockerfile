# Passport in a container: `docker build -t passport .`, then e.g.
#   docker run -v passport-data:/var/lib/passport -v ./passport.toml:/etc/passport/passport.toml:ro \
#     -e PASSPORT_SLACK__BOT_TOKEN -e PASSPORT_SLACK__SIGNING_SECRET -p 8080:8080 passport
# Secrets come from the environment (PASSPORT_<SECTION>__<FIELD>), never from the image.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY manifests ./manifests
COPY benches ./benches
RUN cargo build --release --locked --bin passport

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/passport --create-home --uid 10001 passport
COPY --from=build /src/target/release/passport /usr/local/bin/passport
USER passport
WORKDIR /var/lib/passport
ENV PASSPORT_STORE__PATH=/var/lib/passport/passport.db
VOLUME ["/var/lib/passport"]
# /healthz on this port answers 200 ({"status":"ok"}) while the database answers; it reads no table.
EXPOSE 8080
ENTRYPOINT ["passport", "--config", "/etc/passport/passport.toml"]
CMD ["serve"]
