# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Each creates or updates the project-local virtualenv .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)

.PHONY: demo test install selective-search

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/detector demo

# The browser test (tests/serve/test_browser.py) drives Debian's chromium; install it when missing (quietly, and
# without failing where apt-get is not available: the test then skips, or fails when CI is set).
test: $(STAMP) selective-search
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	  echo "note: could not install chromium with apt-get; the browser test will not run"; }
	$(PY) -m pytest

# Selective search needs OpenCV contrib (cv2.ximgproc). The contrib wheel is a superset of the headless
# wheel and writes the same cv2 module, so install it at the headless wheel's exact version, after it.
# The tests cover selective search, so `make test` installs it too.
selective-search: $(STAMP)
	$(PY) -c "import cv2; cv2.ximgproc" 2>/dev/null || $(PY) -m pip install --quiet --no-deps --force-reinstall \
	  "opencv-contrib-python-headless==$$($(PY) -m pip show opencv-python-headless | sed -n 's/^Version: //p')"
	$(PY) -c "import cv2, albumentations; cv2.ximgproc; print('selective search ready: OpenCV', cv2.__version__)"
