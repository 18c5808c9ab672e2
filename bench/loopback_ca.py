"""A Channel Access port on loopback for the EPICS benches: one free for both UDP and TCP (a CA
server binds both to one port), and the environment that keeps EPICS processes on it."""
import os
import socket


def free_port():
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                    return port
                except OSError:
                    continue


def ca_env(port):
    return dict(os.environ, EPICS_CAS_SERVER_PORT=str(port), EPICS_CA_SERVER_PORT=str(port),
                EPICS_CAS_INTF_ADDR_LIST="127.0.0.1", EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
                EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1", EPICS_CA_AUTO_ADDR_LIST="NO",
                EPICS_CA_ADDR_LIST=f"127.0.0.1:{port}", EPICS_CA_MAX_ARRAY_BYTES="10000000",
                RUST_LOG="warn")
