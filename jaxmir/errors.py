"""Exceptions raised by jaxmir.

Every error a user can provoke with a bad file, graph, array or option is a
:class:`JaxmirError`, and its message says what was wrong and what would be
accepted.
"""

from __future__ import annotations


class JaxmirError(Exception):
    """Base class of every error jaxmir raises on purpose."""


class JaxmirWarning(UserWarning):
    """Base class of jaxmir's warnings (the command line shows them as ``jaxmir: warning:``)."""


class GraphError(JaxmirError):
    """A `.pb` file is missing, unreadable, truncated or not a GraphDef."""


class UnsupportedGraphError(GraphError):
    """A readable GraphDef whose architecture jaxmir does not know."""


class WeightsError(JaxmirError):
    """A converted weights file is missing, corrupt or inconsistent."""


class DeviceMemoryError(JaxmirError):
    """A model call needed more memory than its device (a GPU's, say) has free."""


class NonFiniteOutputError(JaxmirError):
    """A model gave NaN or infinity for finite audio: weights that overflow float32 there."""


class InputError(JaxmirError, ValueError):
    """A value given to jaxmir that cannot be used: an array of the wrong shape, dtype or values,
    an unknown output name, a count that is no whole number, ...; the base of
    :class:`OptionError` (the command line's) and :class:`AudioError`."""


class OptionError(InputError):
    """A command-line option's value that cannot be used (``--patch-hop`` beyond a patch, ``--rate
    0``): the command line is wrong, exit status 2."""


class AudioError(InputError):
    """Audio that cannot be read or used: unreadable, empty, NaN, wrong rate, ..."""


class ShortAudioError(AudioError):
    """Audio too short for one patch; ``length`` says how short without the ways to pad it,
    ``on_command_line`` is the message with the ways spelt as options (``--pad zero``)."""

    def __init__(self, message: str, length: str, on_command_line: str | None = None):
        super().__init__(message)
        self.length = length
        self.on_command_line = on_command_line or message

    def with_damage(self, problem: str, path: str) -> ShortAudioError:
        """This error, with the damage of the file ``path`` that may be why it is short."""
        damage = damage_note(problem, path)
        return ShortAudioError(f"{self}{damage}", self.length, self.on_command_line + damage)


class NoSamplesError(AudioError):
    """Audio of no samples at 16 kHz: a file of a header alone, or of a sample or two."""

    def with_damage(self, problem: str, path: str) -> NoSamplesError:
        """This error, with the damage of the file ``path`` that may be why it has none."""
        return NoSamplesError(f"{self}{damage_note(problem, path)}")


def damage_note(problem: str, path: str) -> str:
    """``" (problem)"``, to follow an error's message: what was wrong with the file ``path``
    (the decoder's words, which may begin with the path), which may be why it failed."""
    return f" ({problem.removeprefix(f'{path}: ')})"
