"""twistd plugin: ``twistd -n xmppcluster --config etc/init.properties``.

Kept import-light: ``twistd --help`` imports every plugin module.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _XmppClusterServiceMaker:
    tapname = "xmppcluster"
    description = "Clustered XMPP server (c2s over TCP, BOSH and WebSocket)"

    @property
    def options(self):
        from xmppcluster.ops.tap import Options

        return Options

    def makeService(self, options):
        from xmppcluster.ops.tap import makeService

        return makeService(options)


serviceMaker = _XmppClusterServiceMaker()
