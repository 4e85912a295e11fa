# netfence's signal forwarder, run by dash (forwarder.py builds its argv):
#   forwarder.sh INFO_FILE GRACE -- SANDBOX_ARGV...
# It starts the sandbox (nsenter + bwrap) as its child and stays its parent, so that if it is
# killed, bwrap's --die-with-parent ends the sandbox. bwrap passes no signal on (a TERM ends
# the sandbox at once; the workload's handler never runs), so a stop signal goes from here to
# the processes the sandbox's init started; a second one, or GRACE seconds going by, kills
# the init (and so its whole PID namespace) and bwrap. INFO_FILE is the regular file that
# bwrap's --info-fd writes ("child-pid": the init). The exit status is the sandbox's, shell
# style (128+N for signal N; 128+N too when it was killed on account of stop signal N).
# SIGUSR1 ends the sandbox and the forwarder with status 1: the fence of a sandbox held at
# bwrap's --block-fd did not come up (whoever sends it says why).
# No loop waits unbounded but the one for the sandbox; only the grace timer forks.
# Under 8 KiB: dash reads it whole at once, so replacing the file (an upgrade) changes no
# forwarder already running.

# shellcheck disable=SC2086,SC2317 # PIDs are split on purpose; traps call the functions
info=$1 grace=$2
if [ $# -lt 4 ] || [ "$3" != -- ]; then
	echo "netfence forwarder: usage: $0 INFO_FILE GRACE -- SANDBOX..." >&2
	exit 125
fi
shift 3
case $grace in '' | *[!0-9.]*)
	echo "netfence forwarder: bad grace: $grace" >&2
	exit 125
esac

child='' init='' first='' killed_for='' timer='' over=''
# What the sandbox gets back at their defaults: a background job of this shell starts with
# INT and QUIT ignored, and a program started with a signal ignored cannot always undo it.
defaults=INT,QUIT,TERM,HUP,PIPE,XFSZ

state_of() { # $1: a PID; sets `state` ("" when gone)
	state=
	while read -r key state rest; do
		[ "$key" = State: ] && return 0
		state=
	done 2>/dev/null <"/proc/$1/status"
}

ours() { # $1: a PID still our child (not reaped): a recycled PID never is
	read -r mine 2>/dev/null <"/proc/$$/task/$$/children"
	case " $mine " in *" $1 "*) return 0 ;; esac
	return 1
}

known_init() { # the init from the info file, once bwrap has written it whole
	[ -z "$init" ] || return 0
	pid='' whole=''
	while IFS= read -r line || [ -n "$line" ]; do
		case $line in
		*'"child-pid":'*)
			pid=${line#*:}
			pid=${pid%,}
			pid=${pid#"${pid%%[! ]*}"}
			;;
		'}') whole=1 ;;
		esac
	done 2>/dev/null <"$info"
	case $pid in '' | *[!0-9]*) return 1 ;; esac
	[ -n "$whole" ] && init=$pid
}

owned_init() { # the init, still bwrap's child
	known_init || return 1
	read -r stat 2>/dev/null <"/proc/$init/stat" || return 1
	set -- ${stat##*) }
	[ "$2" = "$child" ]
}

end_sandbox() {
	ours "$child" || return 0
	if owned_init; then
		# The init first: one still starting has not armed bwrap's --die-with-parent yet.
		kill -s KILL "$init" 2>/dev/null
	else
		# An init bwrap has not announced waits blocked for bwrap, and would outlive it:
		# bwrap is stopped (it cannot start one meanwhile), then its children are killed.
		kill -s STOP "$child" 2>/dev/null
		n=0
		while [ $n -lt 500 ]; do
			state_of "$child"
			case $state in T | t | Z | X | '') break ;; esac
			n=$((n + 1))
		done
		kids=
		read -r kids 2>/dev/null <"/proc/$child/task/$child/children"
		[ -z "$kids" ] || kill -s KILL $kids 2>/dev/null
	fi
	kill -s KILL "$child" 2>/dev/null
}

stop() { # $1: the signal's name, $2: its number
	[ -z "$over" ] || return 0
	[ -n "$child" ] || child=$!
	if [ -z "$child" ]; then # not started: it will not be
		killed_for=${killed_for:-$2}
		return 0
	fi
	ours "$child" || return 0
	kids=
	if owned_init; then
		read -r kids 2>/dev/null <"/proc/$init/task/$init/children"
	fi
	[ -z "$kids" ] || kill -s "$1" $kids 2>/dev/null
	if [ -z "$kids" ] || [ -n "$first" ]; then
		killed_for=${killed_for:-$2}
		end_sandbox
	fi
	if [ -z "$first" ]; then
		first=$2
		# The timer's exit ends a wait for the sandbox. It keeps no stdio open (nor 3-9):
		# killed with this shell, it could outlive it.
		trap expire CHLD
		sleep "$grace" >/dev/null 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
		timer=$!
	fi
}

expire() { # CHLD: the sandbox is killed if the timer is done (reaped, or a zombie)
	[ -n "$timer" ] && [ -z "$over" ] || return 0
	if ours "$timer"; then
		state_of "$timer"
		case $state in Z | X | '') ;; *) return 0 ;; esac
	fi
	timer=
	killed_for=${killed_for:-$first}
	end_sandbox
}

refused() { # USR1
	[ -z "$over" ] || return 0
	[ -n "$child" ] || child=$!
	[ -z "$child" ] || end_sandbox
	over=1
	exit 1
}

trap refused USR1
trap 'stop HUP 1' HUP
trap 'stop INT 2' INT
trap 'stop QUIT 3' QUIT
trap 'stop TERM 15' TERM

[ -z "$killed_for" ] || exit $((128 + killed_for))
# A background job's stdin is /dev/null: the sandbox gets ours through a spare descriptor
# (dash names only 0-9; the others of 3-9 may be the sandbox's: --info-fd, grants).
spare=
if [ -h /proc/$$/fd/0 ]; then
	for n in 9 8 7 6 5 4 3; do
		[ -h /proc/$$/fd/$n ] || {
			spare=$n
			break
		}
	done
	if [ -z "$spare" ]; then
		echo "netfence forwarder: no descriptor of 3-9 free for stdin" >&2
		exit 125
	fi
	eval "exec $spare<&0"
	# Its own session: a terminal's signals reach it only through here.
	eval "setsid env --default-signal=$defaults \"\$@\" <&$spare $spare<&- &"
	child=$!
	eval "exec $spare<&-"
else
	setsid env --default-signal=$defaults "$@" &
	child=$!
fi
[ -z "$killed_for" ] || end_sandbox # a signal came while it was started

# A trap ends a wait early. dash may reap the sandbox in any command after a SIGCHLD, and
# keeps its status for the next wait for it (nothing here forks once it is reaped). stderr
# is the workload's: not for dash's "Killed" when the awaited job died of a signal.
while ours "$child"; do
	wait "$child" 2>/dev/null
done
wait "$child" 2>/dev/null
rc=$?
over=1
[ -z "$timer" ] || ! ours "$timer" || kill "$timer" 2>/dev/null
if [ -n "$killed_for" ] && [ "$rc" -eq 137 ]; then
	rc=$((128 + killed_for))
fi
exit "$rc"
