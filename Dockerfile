# Updraft's image: the one binary on a slim Debian, run as an unprivileged user.
# Every role uses it; the command picks the role (`scheduler`, `webserver`,
# `worker`, `standalone`). Tasks run inside the worker's container, so build your
# own image `FROM` this one with the tools your tasks call.
#
#   docker build -t updraft .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p updraft \
 && install -m 0755 target/release/updraft /usr/local/bin/updraft

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/updraft --shell /usr/sbin/nologin updraft
COPY --from=build /usr/local/bin/updraft /usr/local/bin/updraft
COPY examples/dags /opt/updraft/dags
ENV UPDRAFT_DAGS_FOLDER=/opt/updraft/dags \
    UPDRAFT_CORE__STATE_FOLDER=/var/lib/updraft \
    UPDRAFT_WEBSERVER__AUTH=password
USER updraft
WORKDIR /var/lib/updraft
EXPOSE 8080
# tini reaps the task processes a worker leaves behind and forwards SIGTERM, so a
# stopping worker can end its attempts cleanly.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/updraft"]
CMD ["standalone", "--host", "0.0.0.0", "--port", "8080"]
