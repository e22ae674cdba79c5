# What zsh offers for a command line, one candidate a line:
#     zsh -f tests/zsh_capture.zsh FPATH_DIR 'guestagent balloon '
# An interactive zsh in a pseudo-terminal (zsh/zpty) loads the completion functions of FPATH_DIR
# with compinit, types the line and a TAB; compadd is wrapped to print every candidate it is
# given (the technique of zsh-capture-completion). Used by tests/test_manpage.py.
zmodload zsh/zpty || exit 2
zpty z zsh -f -i
zpty -w z "PROMPT= ; RPROMPT= ; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'zstyle ":completion:*" list-grouped false; zstyle ":completion:*" insert-tab false'
zpty -w z 'compadd () {
  local -a __hits __dscr
  builtin compadd -A __hits -D __dscr "$@"
  local ret=$?
  (( $#__hits )) || return $ret
  local i; for i in {1..$#__hits}; do print -r -- "@""@${__hits[i]}"; done
  return $ret
}'
zpty -w z 'comppostfuncs=(__finish); __finish() { print -r -- "##""##"; zle send-break }'
zpty -w z "$2"$'\t'
local line
integer n=0
while zpty -r z line; do
  [[ $line == *"####"* ]] && break
  [[ $line == *"@@"* ]] && print -r -- "${${line#*@@}%$'\r'}"
  (( ++n > 2000 )) && break
done
zpty -d z
