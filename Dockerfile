# petuq_sirf on top of the SyneRBI SIRF image (SIRF + STIR + their Python interfaces).
#
#   docker build -t petuq_sirf .                                   # SIRF 3.10.1, CPU torch
#   docker build --build-arg SIRF_IMAGE=ghcr.io/synerbi/sirf:3.10.1-gpu --build-arg TORCH=gpu -t petuq_sirf:gpu .
#   docker run --rm -it -v "$PWD/data:/data" -v "$PWD/out:/out" petuq_sirf petuq --help
#
# SIRF_IMAGE: SyneRBI image tags follow SIRF-SuperBuild releases (3.8.0, 3.9.0, 3.10.0, 3.10.1; there is
# no 3.8.1), plus latest / edge and their -gpu variants. petuq_sirf needs Python >= 3.11: images from
# 3.9.0 on ship 3.12; the 3.7-3.8 images ship 3.10 and are refused below.
# TORCH: cpu (CPU wheels, small image) or gpu (the default CUDA wheels).
# See docs/sirf_stir.md for running the examples with data mounted from the host.
ARG SIRF_IMAGE=ghcr.io/synerbi/sirf:3.10.1
FROM ${SIRF_IMAGE}
ARG TORCH=cpu

USER root
RUN python -c "import sys; v = sys.version_info; assert v >= (3, 11), \
    f'petuq_sirf needs Python >= 3.11, this SIRF image has {v.major}.{v.minor}: use SIRF_IMAGE 3.9.0 or later'"
COPY pyproject.toml README.md /opt/petuq_sirf/
COPY petuq_sirf /opt/petuq_sirf/petuq_sirf
COPY examples /opt/petuq_sirf/examples
COPY docs /opt/petuq_sirf/docs
RUN case "${TORCH}" in \
      cpu) extra="--extra-index-url https://download.pytorch.org/whl/cpu" ;; \
      gpu) extra="" ;; \
      *) echo "TORCH must be cpu or gpu, got ${TORCH}" >&2; exit 2 ;; \
    esac \
    && python -m pip install --no-cache-dir ${extra} "/opt/petuq_sirf[all]" \
    && fix-permissions "${CONDA_DIR}" /home/${NB_USER} \
    && chown -R ${NB_UID}:${NB_GID} /opt/petuq_sirf
USER ${NB_UID}

# Smoke test with SIRF's own environment (its env_sirf.sh, as the image's entry point sources it):
# the quick demo, and one reconstruction on the SIRF backend of a default simulation.
RUN . /opt/SIRF-SuperBuild/INSTALL/bin/env_sirf.sh \
    && cd /tmp \
    && petuq demo --quick --no-denoiser --out /tmp/smoke/demo \
    && petuq simulate --counts 1e5 --out /tmp/smoke/acq \
    && petuq reconstruct /tmp/smoke/acq --backend sirf --iterations 1 --subsets 2 --out /tmp/smoke/rec \
    && python -c "import json; m = json.load(open('/tmp/smoke/rec/metrics.json')); print('sirf backend:', m['projector'])" \
    && rm -rf /tmp/smoke

WORKDIR /data
CMD ["petuq", "--help"]
