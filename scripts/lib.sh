# Shared settings for the project's scripts (sourced, not run).
# The cache lives outside the repository and survives clean checkouts: the built
# kube-apiserver, the moto virtualenv and cargo's target directory.
PORTCULLIS_CACHE_DIR=${PORTCULLIS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis}
export PORTCULLIS_CACHE_DIR
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PORTCULLIS_CACHE_DIR/target}
