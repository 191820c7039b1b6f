# petuq_sirf on top of the SyneRBI SIRF image (SIRF + STIR + their Python interfaces).
#
#   docker build -t petuq_sirf .
#   docker run --rm -it -v "$PWD/data:/data" -v "$PWD/out:/out" petuq_sirf \
#       petuq --help
#
# The base image is pinned; override with --build-arg SIRF_IMAGE=ghcr.io/synerbi/sirf:<tag>
# (tags follow SIRF-SuperBuild releases, e.g. 3.8.1; "latest", "edge" and "-gpu" variants exist).
# See docs/sirf_stir.md for running the examples with data mounted from the host.
ARG SIRF_IMAGE=ghcr.io/synerbi/sirf:3.8.1
FROM ${SIRF_IMAGE}

# SIRF's environment (as set by its env_sirf.sh) so that non-interactive commands find sirf.STIR
ENV SIRF_INSTALL_PATH=/opt/SIRF-SuperBuild/INSTALL
ENV PYTHONPATH="/opt/SIRF-SuperBuild/INSTALL/python${PYTHONPATH:+:${PYTHONPATH}}"
ENV LD_LIBRARY_PATH="/opt/SIRF-SuperBuild/INSTALL/lib:/opt/SIRF-SuperBuild/INSTALL/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
ENV PATH="/opt/SIRF-SuperBuild/INSTALL/bin:${PATH}"

USER root
COPY pyproject.toml README.md /opt/petuq_sirf/
COPY petuq_sirf /opt/petuq_sirf/petuq_sirf
COPY examples /opt/petuq_sirf/examples
COPY docs /opt/petuq_sirf/docs
# CPU wheels of torch keep the image small; on a -gpu base image drop the extra index.
RUN python -m pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu /opt/petuq_sirf \
    && chown -R ${NB_UID:-1000}:${NB_GID:-100} /opt/petuq_sirf
USER ${NB_UID:-1000}

# smoke check: the CLI runs and SIRF is seen as a backend
RUN petuq --help \
    && python -c "from petuq_sirf.backends.registry import available_backends as a; b = a(); print('backends:', b); assert 'sirf' in b, b"

WORKDIR /data
CMD ["petuq", "--help"]
