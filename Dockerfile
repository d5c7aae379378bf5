# llmsim: the simulator (`llmsim serve`) by default; the same image runs `llmsim bench` and
# `llmsim worker` (see compose.yaml). Build: docker build -t llmsim .
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: install the package and its dependencies into a virtual environment. The source tree
# and pip's caches stay in this stage; only the environment is copied on.
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md /src/
COPY llmsim /src/llmsim
# pip and setuptools are not needed at run time (23 MB); the bytecode is compiled here because
# the non-root user cannot write it next to the sources, and start-up would compile it each time.
RUN python -m venv /opt/llmsim \
 && /opt/llmsim/bin/pip install /src \
 && /opt/llmsim/bin/pip uninstall -y -q pip setuptools \
 && find /opt/llmsim -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/llmsim/bin/python -m compileall -q /opt/llmsim/lib

# Stage 2: the runtime image.
FROM ${BASE_IMAGE}
COPY --from=build /opt/llmsim /opt/llmsim
# A fixed non-root uid, so a volume mounted for reports can be given to it.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin llmsim
ENV PATH=/opt/llmsim/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER llmsim
WORKDIR /home/llmsim
# bench writes reports here; compose mounts a named volume on it (it inherits this owner).
RUN mkdir reports
EXPOSE 8080
# No curl in the slim image: the interpreter it already has asks /health (over HTTPS when
# LLMSIM_SSL_CERTFILE is set; the certificate is the server's own, so it is not verified here).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request as u; s = 's' if os.environ.get('LLMSIM_SSL_CERTFILE') else ''; u.urlopen(f'http{s}://127.0.0.1:8080/health', timeout=2, context=ssl._create_unverified_context())"]
# Exec form: llmsim is PID 1 and gets SIGTERM itself; it handles it (stop accepting, let
# streams in flight finish for --grace-period-s, then exit 0), so `docker stop` drains.
STOPSIGNAL SIGTERM
CMD ["llmsim", "serve", "--host", "0.0.0.0", "--port", "8080"]
