# Sourced ON the lent GPU machine by gpu_check.sh and gpu_ab.sh: the output
# folder, PTB's training text unpacked (gpu_wheels.sh carries it
# xz-compressed), and pip_install TARGET WHEELS... for the carried wheels.
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
[ -f shared/ptb/ptb.train.txt.xz ] && [ ! -f shared/ptb/ptb.train.txt ] && python3 -c \
  "import lzma, shutil; shutil.copyfileobj(lzma.open('shared/ptb/ptb.train.txt.xz'), open('shared/ptb/ptb.train.txt', 'wb'))"
pip_install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$1" "${@:2}"
}
export PYTHONUNBUFFERED=1
