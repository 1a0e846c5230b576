# syntax=docker/dockerfile:1
# The service images, for hosts with a container engine:
#   docker build --target gateway -t isorun-gateway .     (gateway, lifecycle, quota, scheduler,
#                                                          runner, ctl)
# Without one, `./isorun images` builds the same images (same binaries and libraries, same
# entrypoints and users) with umoci and pushes them to the local registry.

# Build: Debian 12 with exactly the packages scripts/deps.sh lists, then ./isorun build.
FROM debian:12 AS build
WORKDIR /src
COPY isorun CMakeLists.txt ./
COPY scripts/ scripts/
RUN ./isorun deps
COPY . .
RUN rm -rf build && ./isorun build \
 && mkdir -p /out \
 && for b in isorun-gateway isorun-lifecycle isorun-quota isorun-scheduler isorun-runner \
             isorun-sandbox-init isorunctl; do \
      strip --strip-unneeded -o "/out/$b" "build/bin/$b"; \
    done

# Runtime: the shared libraries of the binaries (the runtime packages of the -dev packages above),
# CA certificates, and the unprivileged user every service but the runner runs as.
FROM debian:12-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 libpqxx-6.4 libpq5 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin
WORKDIR /

FROM runtime AS gateway
COPY --from=build /out/isorun-gateway /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/isorun-gateway"]

FROM runtime AS lifecycle
COPY --from=build /out/isorun-lifecycle /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/isorun-lifecycle"]

FROM runtime AS quota
COPY --from=build /out/isorun-quota /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/isorun-quota"]

FROM runtime AS scheduler
COPY --from=build /out/isorun-scheduler /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/isorun-scheduler"]

FROM runtime AS ctl
COPY --from=build /out/isorunctl /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/isorunctl"]

# The runner runs sandboxes with runc, pulls with skopeo and unpacks with umoci; it runs as root
# (the chart makes its pod privileged).
FROM runtime AS runner
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends runc skopeo umoci \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/isorun/runner
COPY --from=build /out/isorun-runner /out/isorun-sandbox-init /usr/local/bin/
USER 0:0
ENTRYPOINT ["/usr/local/bin/isorun-runner"]
