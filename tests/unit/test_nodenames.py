"""minitask.worker.nodenames: Celery's %h, %n, %d in a worker's -n, and %p, %n, %i, %I in
its -f. The worker used to take `-n worker1@%h` literally."""

import socket

from minitask.worker.nodenames import default_node_name, log_file_name, node_name


def test_the_host_variables_of_a_worker_name():
    host = "george.example.com"
    assert node_name("worker1@%h", host) == "worker1@george.example.com"
    assert node_name("worker1@%n", host) == "worker1@george"
    assert node_name("%n.%d", host) == "george.example.com"
    assert node_name("w@%n-%d", "bare") == "w@bare-"           # a host with no domain
    assert node_name("100%%@%h", host) == "100%@george.example.com"
    assert node_name("plain", host) == "plain"
    assert node_name("keep%x", host) == "keep%x"                # unknown: left as written


def test_without_a_host_it_is_this_machine():
    assert node_name("w@%h") == "w@" + socket.gethostname()
    pid, at, host = default_node_name().partition("@")
    assert pid.isdigit() and at and host == socket.gethostname()


def test_log_file_names_use_the_worker_name():
    node = "george@foo.example.com"
    assert log_file_name("%p.log", node) == "george@foo.example.com.log"
    assert log_file_name("%h.log", node) == "foo.example.com.log"
    assert log_file_name("%n.log", node) == "george.log"
    assert log_file_name("%d.log", node) == "example.com.log"
    assert log_file_name("/var/log/%n%I.log", node) == "/var/log/george.log"
    assert log_file_name("%n-%i.log", "solo") == "solo-0.log"
