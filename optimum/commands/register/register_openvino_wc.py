"""Registers ``optimum-cli export openvino-wc``: optimum-intel's export with optimum-wc's engine.

optimum-cli imports every module of the ``optimum.commands.register``
namespace (PEP 420: no ``__init__.py`` here) and adds its
``REGISTER_COMMANDS``.  This module stays light (argparse only) so that
``optimum-cli --help`` does not pay for it; the export imports the heavy
packages when it runs.

    optimum-cli export openvino    -m MODEL --weight-format int4 --group-size 64 OUT   # NNCF
    optimum-cli export openvino-wc -m MODEL --weight-format int4 --group-size 64 OUT   # optimum-wc
"""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo
from optimum.commands.export.base import ExportCommand


class OVWCExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="openvino-wc",
        help="Export a causal LM to OpenVINO IR with weights compressed by optimum-wc's engine "
        "(the weight-compression flags of `export openvino`).",
    )

    @staticmethod
    def parse_args(parser):
        from optimum_wc.cli.options import add_export_options

        add_export_options(parser, optimum_cli=True)

    def run(self):
        from optimum_wc.cli import run_optimum_cli_export

        raise SystemExit(run_optimum_cli_export(self.args))


REGISTER_COMMANDS = [(OVWCExportCommand, ExportCommand)]
