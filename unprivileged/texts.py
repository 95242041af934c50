"""Fixed texts shared by smcrouted and smcroutectl (SPEC 1.5)."""

from __future__ import annotations

PACKAGE = "smcroute-py"
VERSION = "0.1.0"  # pyproject.toml's (a test keeps them equal)
COMPATIBLE = "SMCRoute 2.6"  # whose command lines, smcroute.conf and output it keeps
UPSTREAM = "https://github.com/troglobit/smcroute/"
SYSCONFDIR = "/etc"
RUNSTATEDIR = "/var/run"
DEFAULT_IDENT = "smcroute"


def version_text() -> str:
    # (SMCRoute's own test suite does not read this text)
    return (f"{PACKAGE} v{VERSION}, a reimplementation of {COMPATIBLE}\n\n"
            f"Bug reports: to smcroute-py's maintainers (README.md, SECURITY.md),\n"
            f"             not to SMCRoute's tracker\n"
            f"SMCRoute:    {UPSTREAM}\n")


def smcrouted_usage(conf: str, ident: str, pidfile: str, sock: str) -> str:
    return f"""Usage:
  smcrouted [-hnNsv] [-c SEC] [-d SEC] [-e CMD] [-f FILE] [-i NAME] [-l LVL]{" "}
                     [-m SEC] [-P FILE] [-t ID] [-u FILE]

Options:
  -c SEC          Flush dynamic (*,G) multicast routes every SEC seconds,
                  default 60 sec.  Useful when source/interface changes
  -d SEC          Startup delay, useful for delaying interface probe at boot
  -e CMD          Script or command to call on startup/reload when all routes
                  have been installed, or when a (*,G) is installed
  -f FILE         Configuration file, default use ident NAME: {conf}
  -F FILE         Check configuration file syntax, use -l to increase verbosity
  -h              This help text
  -i NAME         Identity for .conf/.pid/.sock file, and syslog, default: {ident}
  -l LVL          Set log level: none, err, notice*, info, debug
  -m SEC          Multicast router discovery, 4-180, default: 20 sec
  -n              Run daemon in foreground, when started by systemd or finit
  -N              No multicast VIFs/MIFs created by default.  Use with
                  smcroute.conf `phyint enable` directive
  -p USER[:GROUP] After initialization set UID and GID to USER and GROUP
  -P FILE         Set daemon PID file name, with optional path.
                  Default use ident NAME: {pidfile}
  -s              Use syslog, default unless running in foreground, -n
  -t ID           Set multicast routing table ID, default: 0
  -u FILE         UNIX domain socket path, for use with smcroutectl.
                  Default use ident NAME: {sock}
  -v              Show program version and support information

"""


SMCROUTED_LONG_USAGE = """Long options (smcroute-py's own):
  --default-user NAME        Without -p, started as root, run as NAME (default:
                             smcroute); none such: uid 0, confined
  --socket-group GROUP       Full access to the control socket (default: -p group)
  --readonly-group GROUP     Members may use smcroutectl show only
  --max-learned N            Learned (*,G) routes in all, default 50000
  --max-learned-per-rule N   Learned routes per (*,G) rule, default 20000
  --upcall-rate N            Kernel upcalls handled per second, default 10000
  --upcall-queue N           New flows that may wait in the kernel, default 2000
  --kernel-star-g            (*,G) rules with one group become kernel (*,G)
                             entries: new sources forwarded with no upcall
  --log-json                 Log JSON lines instead of text
  --help                     This help text
  --version                  Same as -v

"""


SMCROUTECTL_USAGE = """Usage:
  smcroutectl [OPTIONS] CMD [ARGS]

Options:
  -b            Batch mode, read commands from stdin
  -d            Detailed output in show command
  -j            JSON output for show command
  -i NAME       Identity of routing daemon instance, default: smcroute
  -p            Use plain table headings, no ctrl chars
  -t            Skip table heading in show command
  -u FILE       UNIX domain socket for daemon, default: /var/run/smcroute.sock

Commands:
  help          Show help text
  version       Show program version and support information
  flush         Flush all dynamically installed (*,G) multicast routes
  kill          Kill running daemon
  reload        Reload .conf file, like SIGHUP
  show          Show status of routes, joined groups, interfaces, etc.
  add     ARGS  Add a multicast route
  remove  ARGS  Remove a multicast route
  join    ARGS  Join multicast group on an interface
  leave   ARGS  Leave joined multicast group

Arguments:
         <---------- INBOUND ------------>  <- OUTBOUND ->
  add    IIF [SOURCE-IP[/LEN]] GROUP[/LEN]  OIF [OIF ... ]
  remove IIF [SOURCE-IP[/LEN]] GROUP[/LEN]

  join   IIF [SOURCE-IP[/LEN]] GROUP[/LEN]
  leave  IIF [SOURCE-IP[/LEN]] GROUP[/LEN]

  show   interfaces    Show configured multicast interfaces
  show   groups        Show joined multicast groups
  show   pending       Show routes/groups waiting for their interface
  show   routes        Show (*,G) and (S,G) multicast routes, default

Note:
  Inbound (IIF) and outbound (OIF) interfaces can be either an interface
  name or a wildcard.  E.g., "eth+" matches eth0, eth15, etc.

"""
