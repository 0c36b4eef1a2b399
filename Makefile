# ioplex: the entry point for people, CI and editors.
#
#   make            build into build/ (RelWithDebInfo, -O2)
#   make run        build, then serve the current directory on http://127.0.0.1:8000/
#   make test       build and pass the whole suite in four configurations
#   make format     clang-format every C file (format-check: fail instead of fixing)
#   make bench-loop event-loop overhead per backend
#   make clean      remove every build directory
#
# CMake does the real work; this file only pins down the configurations that
# `make test` (and therefore .ci/run) promises to pass. Every target first runs
# scripts/install-deps, which is silent when the Debian build packages are present.

.DEFAULT_GOAL := build
# cmake --build runs make too; without this every line of its output is framed
# by "Entering directory" noise.
MAKEFLAGS += --no-print-directory
NPROC := $(shell nproc 2>/dev/null || echo 2)
BUILD_DIRS := build build-asan build-tsan build-fuzz

# Sanitizer and fuzz builds keep assertions on (no -DNDEBUG) and use -O1: the
# usual trade-off between sanitizer speed and readable stack traces.
CHECKED := -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS_DEBUG=-g -O1"

# Sanitizer errors must fail the test that hit them, never just print: abort on
# the first report. Exported to every command make runs from here.
export ASAN_OPTIONS := detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS := print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS := halt_on_error=1 second_deadlock_stack=1

# $(call configure_and_build,DIR,CMAKE-ARGS): the same two steps for every
# configuration. Re-running it on an existing DIR is cheap (incremental).
define configure_and_build
	cmake -S . -B $(1) $(2)
	cmake --build $(1) -j$(NPROC)
endef

.PHONY: all build deps run test test-default test-asan test-tsan test-fuzz \
        format format-check bench-loop clean

all: build

deps:
	@scripts/install-deps

build: deps
	$(call configure_and_build,build,-DCMAKE_BUILD_TYPE=RelWithDebInfo)

run: build
	exec scripts/run

# The configurations run one after another, each stopping `make test` at its
# first failure. They are separate recipe lines rather than prerequisites so
# that `make -j test` cannot interleave them.
test: deps
	$(MAKE) test-default
	$(MAKE) test-asan
	$(MAKE) test-tsan
	$(MAKE) test-fuzz

test-default: build
	ctest --test-dir build --output-on-failure -j2

# gcc's ASan+UBSan is as good as clang's, and keeps gcc-specific warnings in play.
test-asan: deps
	$(call configure_and_build,build-asan,$(CHECKED) -DCMAKE_C_COMPILER=gcc -DIOPLEX_SANITIZE=address)
	ctest --test-dir build-asan --output-on-failure -j2

# Only the thread-labelled tests: TSan is slow and the rest of the suite is
# single-threaded. No such test yet is not a failure.
test-tsan: deps
	$(call configure_and_build,build-tsan,$(CHECKED) -DCMAKE_C_COMPILER=clang -DIOPLEX_SANITIZE=thread)
	ctest --test-dir build-tsan --output-on-failure -j2 -L thread --no-tests=ignore

# libFuzzer ships with clang only.
test-fuzz: deps
	$(call configure_and_build,build-fuzz,$(CHECKED) -DCMAKE_C_COMPILER=clang -DIOPLEX_FUZZ=ON)
	ctest --test-dir build-fuzz --output-on-failure -j2 -L fuzz --no-tests=ignore

bench-loop: build
	build/ioplex bench loop --backend all

# NUL-separated and `xargs -r`: no file is skipped for a space in its name, and
# clang-format is not left reading stdin when there are no files yet.
FORMAT_FILES := find include src tests examples bench -path tests/fuzz/corpus -prune \
                -o -type f \( -name '*.c' -o -name '*.h' \) -print0 2>/dev/null

format: deps
	$(FORMAT_FILES) | xargs -0 -r clang-format -i

format-check: deps
	$(FORMAT_FILES) | xargs -0 -r clang-format --dry-run -Werror

clean:
	rm -rf $(BUILD_DIRS)
