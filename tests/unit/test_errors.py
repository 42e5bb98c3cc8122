"""The error tree: every class pickles with its message and fields; raise sites fill the fields they know."""

import pickle
import socket

import pytest

import shmring
from shmring import errors
from shmring.ingest import prepare_socket_path
from shmring.producer import Producer

CLASSES = [getattr(errors, name) for name in errors.__all__]


def sample(cls) -> dict:
    """A distinct value for each field of `cls`."""
    values = {"rejected": [(1, "bad type")], "seqs": [7, None], "name": "ring-a", "path": "/run/x.sock"}
    return {field: values.get(field, f"{field}-value") for field in cls.fields}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_message_and_fields(cls):
    error = cls("what is wrong; what to do", **sample(cls))
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls and isinstance(back, errors.ShmringError)
    assert str(back) == str(error) == "what is wrong; what to do"
    assert back.args == error.args == ("what is wrong; what to do",)
    assert {f: getattr(back, f) for f in cls.fields} == sample(cls)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fields_default_to_none_and_a_message_alone_is_as_before(cls):
    error = cls("just a message")
    assert str(error) == "just a message" and error.args == ("just a message",)
    for field in cls.fields:
        expected = [] if cls is errors.PublishRejected and field in ("rejected", "seqs") else None
        assert getattr(error, field) == expected
    assert str(pickle.loads(pickle.dumps(error))) == "just a message"


def test_a_subclass_has_its_parents_fields_and_rejects_others():
    assert errors.SocketPathError.fields == ("name", "path") and issubclass(errors.SocketPathError, ValueError)
    assert errors.EventTooLarge.fields == ("size_bytes", "limit_bytes")
    with pytest.raises(TypeError, match="no field pid"):
        errors.RingNotFound("x", pid=1)
    assert repr(errors.RingBusy("taken", name="r", pid=5)) == "RingBusy('taken', name='r', pid=5)"


def test_publish_rejected_keeps_its_positional_form():
    error = shmring.PublishRejected("2 rejected", [(0, "a"), (3, "b")], [None, 2, 3, None], path="/s")
    back = pickle.loads(pickle.dumps(error))
    assert (back.rejected, back.seqs, back.path) == ([(0, "a"), (3, "b")], [None, 2, 3, None], "/s")


def test_users_catch_the_new_classes_from_the_package():
    for name in ("RegistryFull", "ReaderClosed", "ServeError", "ProducerError", "SocketPathError", "PublishRejected"):
        assert getattr(shmring, name) is getattr(errors, name) and name in shmring.__all__


# -- raise sites without shared memory -----------------------------------------------------------


def test_a_socket_path_that_is_a_file_is_a_socket_path_error(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("")
    with pytest.raises(errors.SocketPathError, match="is not a socket") as caught:
        prepare_socket_path(str(path))
    assert caught.value.path == str(path) and isinstance(caught.value, errors.ConfigError)


def test_a_socket_path_in_use_is_a_socket_path_error(tmp_path):
    path = str(tmp_path / "live.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen()
        with pytest.raises(errors.SocketPathError, match="in use") as caught:
            prepare_socket_path(path)
        assert caught.value.path == path
    finally:
        listener.close()


def test_a_producer_that_cannot_connect_says_where(tmp_path):
    path = str(tmp_path / "nobody.sock")
    with pytest.raises(errors.ProducerError, match="cannot connect") as caught:
        Producer.connect(path, timeout=1)
    assert caught.value.path == path


def test_an_event_that_is_not_one_line_is_an_invalid_event():
    with pytest.raises(errors.InvalidEvent, match="one non-empty JSON line"):
        Producer._line(b"  ")
